//! What one run does ([`RunConfig`]), its defaults and their validation, and
//! the shipped stock list.

use std::time::Duration;

use common::stocks::StockSeed;

/// The shipped `data/stocks.csv`, embedded so the client and `bazaar` know
/// the stocks without finding the file at run time.
pub const SHIPPED_STOCKS: &str = include_str!("../../data/stocks.csv");

/// The rows of the shipped `data/stocks.csv`.
pub fn shipped_stocks() -> Vec<StockSeed> {
    common::stocks::parse(SHIPPED_STOCKS)
        .expect("the shipped data/stocks.csv is valid (a unit test reads it)")
}

/// The stock names of the shipped `data/stocks.csv`, used unless `--stocks`
/// names others.
pub fn default_stocks() -> Vec<String> {
    shipped_stocks().into_iter().map(|s| s.name).collect()
}

/// What one run does.
#[derive(Debug, Clone)]
pub struct RunConfig {
    /// `http://host:port` of the front-end, without a trailing slash.
    pub base_url: String,
    /// Iterations per session.
    pub n_request: u64,
    /// Probability that an iteration trades after its lookup.
    pub prob: f64,
    /// Concurrent sessions.
    pub clients: usize,
    /// Seed of the random choices; the same seed makes the same requests.
    pub seed: u64,
    /// Stocks to pick from.
    pub stocks: Vec<String>,
    /// Largest quantity of one trade (each trade takes 1..=this).
    pub max_quantity: u64,
    /// Timeout of one HTTP attempt.
    pub attempt_timeout: Duration,
    /// How long a request whose outcome is unknown is retried.
    pub retry_for: Duration,
    /// Draw a progress bar on stderr (only when stdout is a terminal).
    pub progress: bool,
    /// Stop every session after this long, even before `n_request`.
    pub duration: Option<Duration>,
}

impl RunConfig {
    pub fn new(base_url: impl Into<String>) -> Self {
        Self {
            base_url: base_url.into(),
            n_request: 100,
            prob: 0.5,
            clients: 1,
            seed: 0,
            stocks: default_stocks(),
            max_quantity: 5,
            attempt_timeout: Duration::from_secs(10),
            retry_for: Duration::from_secs(30),
            progress: false,
            duration: None,
        }
    }

    pub(crate) fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            (0.0..=1.0).contains(&self.prob),
            "--prob must be in 0..=1, got {}",
            self.prob
        );
        anyhow::ensure!(
            (1..=10_000).contains(&self.clients),
            "--clients must be in 1..=10000, got {}",
            self.clients
        );
        anyhow::ensure!(!self.stocks.is_empty(), "no stocks to trade");
        for name in &self.stocks {
            common::types::validate_stock_name(name)
                .map_err(|e| anyhow::anyhow!("--stocks: {e}"))?;
        }
        anyhow::ensure!(
            (1..=common::types::MAX_TRADE_QUANTITY).contains(&self.max_quantity),
            "the largest trade quantity must be in 1..={}",
            common::types::MAX_TRADE_QUANTITY
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_stocks_come_from_the_shipped_csv() {
        let stocks = default_stocks();
        assert!(stocks.len() >= 10, "{stocks:?}");
        assert!(stocks.iter().any(|s| s == "AAPL"));
        assert!(!stocks.iter().any(|s| s == "name"));
    }

    #[test]
    fn bad_configs_are_refused() {
        let mut c = RunConfig::new("http://127.0.0.1:1");
        c.prob = 1.5;
        assert!(c.validate().is_err());
        let mut c = RunConfig::new("http://127.0.0.1:1");
        c.clients = 0;
        assert!(c.validate().is_err());
        let mut c = RunConfig::new("http://127.0.0.1:1");
        c.stocks = vec!["A/B".into()];
        assert!(c.validate().is_err());
    }
}
