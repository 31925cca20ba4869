//! The one `stocks.csv` parser: the catalog seeds its database with it and
//! the client reads the stock list with it, so both agree on what a valid
//! file is and name the same line when it is not.

use std::collections::HashSet;

/// One row of `stocks.csv`: a stock and what the catalog starts it with.
#[derive(Debug, Clone, PartialEq)]
pub struct StockSeed {
    pub name: String,
    pub price: f64,
    pub quantity: u64,
}

/// Parses `name,price,quantity` lines. A header line (first line starting
/// with `name`), blank lines and `#` comments are skipped. Errors name the
/// 1-based line; a file without any stock is an error too.
pub fn parse(text: &str) -> Result<Vec<StockSeed>, String> {
    let mut rows = Vec::new();
    let mut seen = HashSet::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || (i == 0 && line.starts_with("name")) {
            continue;
        }
        let line_no = i + 1;
        let fields: Vec<&str> = line.split(',').map(str::trim).collect();
        let [name, price, quantity] = fields.as_slice() else {
            return Err(format!("line {line_no}: expected name,price,quantity"));
        };
        crate::types::validate_stock_name(name).map_err(|e| format!("line {line_no}: {e}"))?;
        let price: f64 = price
            .parse()
            .map_err(|_| format!("line {line_no}: bad price {price:?}"))?;
        if !price.is_finite() || price < 0.0 {
            return Err(format!(
                "line {line_no}: price must be a non-negative number"
            ));
        }
        let quantity: u64 = quantity
            .parse()
            .map_err(|_| format!("line {line_no}: bad quantity {quantity:?}"))?;
        if !seen.insert(name.to_string()) {
            return Err(format!("line {line_no}: stock {name} listed twice"));
        }
        rows.push(StockSeed {
            name: name.to_string(),
            price,
            quantity,
        });
    }
    if rows.is_empty() {
        return Err("no stocks listed".into());
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_header_comments_and_blanks() {
        let rows = parse("name,price,quantity\n# c\n\nAAPL, 15.99 ,100\nMSFT,1.5,10\n").unwrap();
        assert_eq!(
            rows,
            vec![
                StockSeed {
                    name: "AAPL".into(),
                    price: 15.99,
                    quantity: 100
                },
                StockSeed {
                    name: "MSFT".into(),
                    price: 1.5,
                    quantity: 10
                },
            ]
        );
    }

    #[test]
    fn errors_name_the_line() {
        assert!(
            parse("name,price,quantity\nA,1,x\n")
                .unwrap_err()
                .contains("line 2")
        );
        assert!(parse("A,1,1\nA,2,2\n").unwrap_err().contains("twice"));
        assert!(parse("A,1\n").unwrap_err().contains("line 1: expected"));
        assert!(parse("A,-1,1\n").unwrap_err().contains("non-negative"));
        assert!(parse("A,NaN,1\n").unwrap_err().contains("non-negative"));
        assert!(parse("a/b,1,1\n").unwrap_err().starts_with("line 1: "));
        assert_eq!(
            parse("name,price,quantity\n").unwrap_err(),
            "no stocks listed"
        );
    }
}
