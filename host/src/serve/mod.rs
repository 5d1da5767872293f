//! `adtally serve`: the design's two APIs over HTTP, with the OpenAPI
//! document generated from the handlers.
//!
//! | route | answers |
//! |---|---|
//! | `GET /v1/ads/{ad_id}/aggregated_count?from=&to=&filter=&country=&ip=&user_id=` | API 1 ([`CountAnswer`]) |
//! | `GET /v1/ads/popular_ads?count=&window=&filter=` | API 2 ([`PopularAnswer`]) |
//! | `GET /v1/ads/{ad_id}/minutes?from=&to=&filter=` | an ad's clicks per minute (the dashboard's chart) |
//! | `GET /v1/rankings?window=&filter=` | each partition's top-N list of the last final minute, unmerged (the dashboard merges them with the core's browser build) |
//! | `GET /v1/pipeline` | each partition's watermark, the first minute not final, the filters and windows, and each host's metrics (`--host-metrics`) |
//! | `GET /` | the dashboard (`host/dashboard/`; the core's browser build from `--core-js`) |
//! | `GET /v1/ping` | `ok`: the server alone, no ClickHouse (a load test's ceiling) |
//! | `GET /openapi.json` | the OpenAPI 3.1 document of these routes |
//! | `GET /metrics` | Prometheus metrics (requests and latency by route and status) |
//!
//! A bad parameter gets a 400 whose JSON body names it ([`ErrorBody`]); a
//! ClickHouse that fails or does not answer within the reader's timeout, a
//! 503. This module owns HTTP only: what is asked and answered is the
//! [`query`](crate::query) module's, through the same code as `adtally query`.

mod dashboard;
mod hosts;

pub use hosts::{HostPartition, HostStatus};

use crate::query::{
    BadParameter, CountAnswer, CountParams, MinutesAnswer, MinutesParams, PopularAnswer,
    PopularParams, QueryError, RankingParams, RankingsAnswer, Reader, minute_text, now_ms,
};
use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// A refused request's body.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// `bad_parameter` (400) or `unavailable` (503).
    pub error: &'static str,
    /// The parameter refused (400 only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parameter: Option<String>,
    /// The value refused (400 only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// What is wrong.
    pub message: String,
}

/// What the server answers with: the reader, and where the dashboard's
/// parts are.
#[derive(Clone)]
pub struct App {
    /// Answers the questions.
    pub reader: Reader,
    /// `/metrics` URLs of the `adtally run` hosts, for the pipeline's health.
    pub host_metrics: Vec<String>,
    /// The directory of the core's browser build (`make wasm`'s `target/wasm/web`).
    pub core_js: std::path::PathBuf,
}

/// Where the pipeline stands, for dashboards.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct PipelineAnswer {
    /// Each partition's watermark as last recorded with its offsets.
    pub partitions: Vec<PartitionStatus>,
    /// The first minute not final in every partition (RFC 3339).
    pub final_to: Option<String>,
    /// The filters a request may name: `[id, name]`, 0 first.
    pub filters: Vec<(u32, String)>,
    /// The windows the core ranks itself (API 2 reads them precomputed).
    pub windows: Vec<u32>,
    /// How many ads the core ranks per list.
    pub top_n: u32,
    /// Each `--host-metrics` host, as its metrics say.
    pub hosts: Vec<HostStatus>,
}

/// One partition's watermark.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct PartitionStatus {
    /// The topic.
    pub topic: String,
    /// The partition.
    pub partition: u32,
    /// `W_p` (RFC 3339), `null` before the partition has one.
    pub watermark: Option<String>,
}

/// Why a request got no answer: a handler's error, with `?` from each
/// step (the query string, the parameters' check, the reader).
struct Refusal(QueryError);

impl From<QueryError> for Refusal {
    fn from(e: QueryError) -> Refusal {
        Refusal(e)
    }
}

impl From<BadParameter> for Refusal {
    fn from(b: BadParameter) -> Refusal {
        Refusal(QueryError::Bad(b))
    }
}

impl From<QueryRejection> for Refusal {
    fn from(r: QueryRejection) -> Refusal {
        unreadable(r).into()
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        match self.0 {
            QueryError::Bad(b) => bad(b),
            QueryError::Unavailable(message) => {
                tracing::warn!("answering 503: {message}");
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    Json(ErrorBody {
                        error: "unavailable",
                        parameter: None,
                        value: None,
                        message,
                    }),
                )
                    .into_response()
            }
        }
    }
}

fn bad(b: BadParameter) -> Response {
    (
        StatusCode::BAD_REQUEST,
        Json(ErrorBody {
            error: "bad_parameter",
            parameter: Some(b.parameter),
            value: Some(b.value),
            message: b.message,
        }),
    )
        .into_response()
}

/// A query string axum could not read (an unknown parameter, a repeated
/// one) as a 400 naming the parameter.
fn unreadable(r: QueryRejection) -> BadParameter {
    let text = r.body_text();
    let parameter = text
        .split('`')
        .nth(1)
        .map_or_else(|| "query".to_owned(), str::to_owned);
    let message = if text.contains("unknown field") {
        "no such parameter".to_owned()
    } else {
        text
    };
    BadParameter {
        parameter,
        value: String::new(),
        message,
    }
}

/// API 1: the clicks of an ad in the minutes `[from, to)`.
#[utoipa::path(
    get,
    path = "/v1/ads/{ad_id}/aggregated_count",
    params(("ad_id" = String, Path, description = "The ad, as the core accepts ad ids"), CountParams),
    responses(
        (status = 200, description = "The count", body = CountAnswer),
        (status = 400, description = "A parameter is wrong", body = ErrorBody),
        (status = 503, description = "ClickHouse failed or is slow", body = ErrorBody),
    ),
    tag = "ads"
)]
async fn aggregated_count(
    State(app): State<App>,
    Path(ad_id): Path<String>,
    params: Result<Query<CountParams>, QueryRejection>,
) -> Result<Json<CountAnswer>, Refusal> {
    let req = params?.check(&ad_id, app.reader.catalog(), now_ms())?;
    Ok(Json(app.reader.count(&req).await?))
}

/// API 2: the most clicked ads of the last `window` final minutes.
#[utoipa::path(
    get,
    path = "/v1/ads/popular_ads",
    params(PopularParams),
    responses(
        (status = 200, description = "The ranking", body = PopularAnswer),
        (status = 400, description = "A parameter is wrong", body = ErrorBody),
        (status = 503, description = "ClickHouse failed or is slow", body = ErrorBody),
    ),
    tag = "ads"
)]
async fn popular_ads(
    State(app): State<App>,
    params: Result<Query<PopularParams>, QueryRejection>,
) -> Result<Json<PopularAnswer>, Refusal> {
    let req = params?.check(app.reader.catalog())?;
    Ok(Json(app.reader.popular(&req).await?))
}

/// Each partition's watermark and the first minute not final.
#[utoipa::path(
    get,
    path = "/v1/pipeline",
    responses(
        (status = 200, description = "Where the pipeline stands", body = PipelineAnswer),
        (status = 503, description = "ClickHouse failed or is slow", body = ErrorBody),
    ),
    tag = "pipeline"
)]
async fn pipeline(State(app): State<App>) -> Result<Json<PipelineAnswer>, Refusal> {
    let hosts = hosts::statuses(&app.host_metrics).await;
    let config = app.reader.catalog().config();
    let filters = std::iter::once((0, "all clicks".to_owned()))
        .chain(config.filters.iter().map(|f| {
            (
                f.id,
                f.name.clone().unwrap_or_else(|| format!("filter {}", f.id)),
            )
        }))
        .collect();
    let f = app.reader.finality().await?;
    Ok(Json(PipelineAnswer {
        filters,
        windows: config.top_n_windows.clone(),
        top_n: config.top_n,
        hosts,
        partitions: f
            .partitions
            .into_iter()
            .map(|(topic, partition, w)| PartitionStatus {
                topic,
                partition,
                watermark: w.map(crate::reconcile::report::time),
            })
            .collect(),
        final_to: f.final_to.map(minute_text),
    }))
}

/// An ad's clicks per minute in `[from, to)` (at most a day of minutes).
#[utoipa::path(
    get,
    path = "/v1/ads/{ad_id}/minutes",
    params(("ad_id" = String, Path, description = "The ad"), MinutesParams),
    responses(
        (status = 200, description = "The clicks per minute", body = MinutesAnswer),
        (status = 400, description = "A parameter is wrong", body = ErrorBody),
        (status = 503, description = "ClickHouse failed or is slow", body = ErrorBody),
    ),
    tag = "ads"
)]
async fn minutes(
    State(app): State<App>,
    Path(ad_id): Path<String>,
    params: Result<Query<MinutesParams>, QueryRejection>,
) -> Result<Json<MinutesAnswer>, Refusal> {
    let Query(params) = params?;
    let reader = &app.reader;
    let req = params
        .count_params()
        .check(&ad_id, reader.catalog(), now_ms())?;
    let windows = (req.minutes.to.0 - req.minutes.from.0) / reader.catalog().window_ms();
    if windows > 1440 {
        return Err(BadParameter::new(
            "from",
            params.from.as_deref().unwrap_or(""),
            format!("a chart holds at most 1440 minutes, this range {windows}"),
        )
        .into());
    }
    Ok(Json(reader.minutes(&req).await?))
}

/// Each partition's own ranking of the last final minute, unmerged.
#[utoipa::path(
    get,
    path = "/v1/rankings",
    params(RankingParams),
    responses(
        (status = 200, description = "The partitions' rankings", body = RankingsAnswer),
        (status = 400, description = "A parameter is wrong", body = ErrorBody),
        (status = 503, description = "ClickHouse failed or is slow", body = ErrorBody),
    ),
    tag = "ads"
)]
async fn rankings(
    State(app): State<App>,
    params: Result<Query<RankingParams>, QueryRejection>,
) -> Result<Json<RankingsAnswer>, Refusal> {
    let req = params?.check(app.reader.catalog())?;
    Ok(Json(app.reader.rankings(&req).await?))
}

/// The server alone: no ClickHouse, no state.
#[utoipa::path(get, path = "/v1/ping", responses((status = 200, description = "ok", body = String)), tag = "pipeline")]
async fn ping() -> &'static str {
    "ok"
}

#[derive(OpenApi)]
#[openapi(info(
    title = "adtally",
    description = "Exact ad-click counts: the clicks of an ad in a range of minutes, and the most clicked ads of the last minutes."
))]
struct ApiDoc;

/// Counts each request and its time under its route's pattern (not the
/// path: an ad id is no label).
async fn measured(
    matched: Option<axum::extract::MatchedPath>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let route = matched.map_or_else(|| "unmatched".to_owned(), |m| m.as_str().to_owned());
    let started = std::time::Instant::now();
    let res = next.run(req).await;
    crate::metrics::request(&route, res.status().as_u16(), started.elapsed());
    res
}

/// The routes, their OpenAPI document, and `/metrics` rendered from `metrics`.
pub fn router(app: App, metrics: metrics_exporter_prometheus::PrometheusHandle) -> axum::Router {
    let core_js = app.core_js.clone();
    let (router, api) = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(aggregated_count))
        .routes(routes!(popular_ads))
        .routes(routes!(minutes))
        .routes(routes!(rankings))
        .routes(routes!(pipeline))
        .routes(routes!(ping))
        .with_state(app)
        .split_for_parts();
    let router = dashboard::routes(router, core_js);
    let doc = api.to_json().unwrap_or_default();
    router
        .route(
            "/openapi.json",
            axum::routing::get(move || async move {
                (
                    [(axum::http::header::CONTENT_TYPE, "application/json")],
                    doc,
                )
            }),
        )
        .route(
            "/metrics",
            axum::routing::get(move || async move { metrics.render() }),
        )
        .route_layer(axum::middleware::from_fn(measured))
}

/// Serves `router` on `listener` until the process is stopped.
pub async fn serve(listener: tokio::net::TcpListener, router: axum::Router) -> anyhow::Result<()> {
    axum::serve(listener, router)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}
