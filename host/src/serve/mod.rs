//! `adtally serve`: the design's two APIs over HTTP, with the OpenAPI
//! document generated from the handlers.
//!
//! | route | answers |
//! |---|---|
//! | `GET /v1/ads/{ad_id}/aggregated_count?from=&to=&filter=&country=&ip=&user_id=` | API 1 ([`CountAnswer`]) |
//! | `GET /v1/ads/popular_ads?count=&window=&filter=` | API 2 ([`PopularAnswer`]) |
//! | `GET /v1/pipeline` | each partition's watermark, the first minute not final |
//! | `GET /v1/ping` | `ok`: the server alone, no ClickHouse (a load test's ceiling) |
//! | `GET /openapi.json` | the OpenAPI 3.1 document of these routes |
//! | `GET /metrics` | Prometheus metrics (requests and latency by route and status) |
//!
//! A bad parameter gets a 400 whose JSON body names it ([`ErrorBody`]); a
//! ClickHouse that fails or does not answer within the reader's timeout, a
//! 503. This module owns HTTP only: what is asked and answered is the
//! [`query`](crate::query) module's, through the same code as `adtally query`.

use crate::query::{
    BadParameter, CountAnswer, CountParams, PopularAnswer, PopularParams, QueryError, Reader,
    minute_text,
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

/// Where the pipeline stands, for dashboards.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct PipelineAnswer {
    /// Each partition's watermark as last recorded with its offsets.
    pub partitions: Vec<PartitionStatus>,
    /// The first minute not final in every partition (RFC 3339).
    pub final_to: Option<String>,
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

struct Refusal(QueryError);

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
fn unreadable(r: QueryRejection) -> Response {
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
    bad(BadParameter {
        parameter,
        value: String::new(),
        message,
    })
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
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
    State(reader): State<Reader>,
    Path(ad_id): Path<String>,
    params: Result<Query<CountParams>, QueryRejection>,
) -> Response {
    let Query(params) = match params {
        Ok(p) => p,
        Err(r) => return unreadable(r),
    };
    let req = match params.check(&ad_id, reader.catalog(), now_ms()) {
        Ok(r) => r,
        Err(b) => return bad(b),
    };
    match reader.count(&req).await {
        Ok(a) => Json(a).into_response(),
        Err(e) => Refusal(e).into_response(),
    }
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
    State(reader): State<Reader>,
    params: Result<Query<PopularParams>, QueryRejection>,
) -> Response {
    let Query(params) = match params {
        Ok(p) => p,
        Err(r) => return unreadable(r),
    };
    let req = match params.check(reader.catalog()) {
        Ok(r) => r,
        Err(b) => return bad(b),
    };
    match reader.popular(&req).await {
        Ok(a) => Json(a).into_response(),
        Err(e) => Refusal(e).into_response(),
    }
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
async fn pipeline(State(reader): State<Reader>) -> Response {
    match reader.finality().await {
        Ok(f) => Json(PipelineAnswer {
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
        })
        .into_response(),
        Err(e) => Refusal(e).into_response(),
    }
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
pub fn router(
    reader: Reader,
    metrics: metrics_exporter_prometheus::PrometheusHandle,
) -> axum::Router {
    let (router, api) = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(aggregated_count))
        .routes(routes!(popular_ads))
        .routes(routes!(pipeline))
        .routes(routes!(ping))
        .with_state(reader)
        .split_for_parts();
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
