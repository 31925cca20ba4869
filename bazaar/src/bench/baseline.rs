//! The baseline of `bazaar bench`: a bare axum server in this process that
//! answers a lookup with the same JSON from a map in memory, the limit of
//! this machine now.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::routing::get;
use common::types::{Data, Stock};

/// The baseline server: the same JSON as a lookup, from a map in memory.
pub(super) async fn server() -> anyhow::Result<SocketAddr> {
    let stocks: HashMap<String, Stock> = crate::verify::initial_stocks()
        .into_iter()
        .map(|(name, quantity)| {
            let stock = Stock {
                name: name.clone(),
                price: 10.0,
                quantity,
            };
            (name, stock)
        })
        .collect();
    async fn lookup(
        State(stocks): State<Arc<HashMap<String, Stock>>>,
        Path(name): Path<String>,
    ) -> Result<Json<Data<Stock>>, axum::http::StatusCode> {
        stocks
            .get(&name)
            .cloned()
            .map(|s| Json(Data::new(s)))
            .ok_or(axum::http::StatusCode::NOT_FOUND)
    }
    let app = axum::Router::new()
        .route("/stocks/{name}", get(lookup))
        .with_state(Arc::new(stocks));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(addr)
}
