//! The dashboard at `/`: a page, its script and style (embedded from
//! `host/dashboard/`), the charting library served with it (uPlot, MIT,
//! vendored: the machines it runs on may have no internet), and the core's
//! browser build (wasm-bindgen's `web` target, read from `--core-js`), with
//! which the page merges the partitions' rankings itself.

use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use std::path::PathBuf;

const INDEX: &str = include_str!("../../dashboard/index.html");
const SCRIPT: &str = include_str!("../../dashboard/dashboard.js");
const STYLE: &str = include_str!("../../dashboard/dashboard.css");
const UPLOT: &str = include_str!("../../dashboard/vendor/uPlot.iife.min.js");
const UPLOT_CSS: &str = include_str!("../../dashboard/vendor/uPlot.min.css");

fn text(kind: &'static str, body: &'static str) -> Response {
    ([(header::CONTENT_TYPE, kind)], body).into_response()
}

/// `router` with the dashboard's routes.
pub(super) fn routes(router: axum::Router, core_js: PathBuf) -> axum::Router {
    use axum::routing::get;
    router
        .route(
            "/",
            get(|| async { text("text/html; charset=utf-8", INDEX) }),
        )
        .route(
            "/dashboard/dashboard.js",
            get(|| async { text("text/javascript", SCRIPT) }),
        )
        .route(
            "/dashboard/dashboard.css",
            get(|| async { text("text/css", STYLE) }),
        )
        .route(
            "/dashboard/uPlot.iife.min.js",
            get(|| async { text("text/javascript", UPLOT) }),
        )
        .route(
            "/dashboard/uPlot.min.css",
            get(|| async { text("text/css", UPLOT_CSS) }),
        )
        .route(
            "/core/{file}",
            get(
                move |axum::extract::Path(file): axum::extract::Path<String>| {
                    let dir = core_js.clone();
                    async move { core_file(&dir, &file).await }
                },
            ),
        )
}

/// One file of the core's browser build: only the two wasm-bindgen writes.
async fn core_file(dir: &std::path::Path, file: &str) -> Response {
    let kind = match file {
        "adtally_js.js" => "text/javascript",
        "adtally_js_bg.wasm" => "application/wasm",
        _ => return (StatusCode::NOT_FOUND, "no such file").into_response(),
    };
    match std::fs::read(dir.join(file)) {
        Ok(bytes) => ([(header::CONTENT_TYPE, kind)], bytes).into_response(),
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "the core's browser build is missing ({}: {e}); `make wasm` writes it",
                dir.join(file).display()
            ),
        )
            .into_response(),
    }
}
