//! Formatting: numbers for people, markdown tables, and the few JSON values we print.

/// 1234567 → "1,234,567": round-trip counts are read at a glance only with separators.
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A measurement with three significant digits, the precision these runs can claim:
/// 0.012345 → "0.0123", 2.5 → "2.50", 935.2 → "935", 12345.6 → "12,346".
pub fn sig3(x: f64) -> String {
    if !x.is_finite() {
        return "–".to_owned();
    }
    let a = x.abs();
    if a >= 1000.0 {
        return thousands(x.round() as u64);
    }
    let decimals = if a == 0.0 {
        2
    } else {
        (2 - a.log10().floor() as i32).max(0) as usize
    };
    format!("{x:.decimals$}")
}

/// A markdown table: the first column left-aligned, the others (numbers) right-aligned, every
/// column padded to its widest cell so that the source reads as a table too.
pub fn markdown(headers: &[&str], rows: &[Vec<String>]) -> String {
    let width = |col: usize| {
        rows.iter()
            .filter_map(|r| r.get(col))
            .map(|c| c.chars().count())
            .chain([headers[col].chars().count(), 3])
            .max()
            .unwrap_or(3)
    };
    let widths: Vec<usize> = (0..headers.len()).map(width).collect();
    let line = |cells: Vec<String>| format!("| {} |\n", cells.join(" | "));
    let pad = |col: usize, text: &str| {
        let fill = " ".repeat(widths[col] - text.chars().count());
        if col == 0 {
            format!("{text}{fill}")
        } else {
            format!("{fill}{text}")
        }
    };
    let mut out = line(headers.iter().enumerate().map(|(i, h)| pad(i, h)).collect());
    out += &line(
        widths
            .iter()
            .enumerate()
            .map(|(i, w)| {
                if i == 0 {
                    "-".repeat(*w)
                } else {
                    format!("{}:", "-".repeat(w - 1))
                }
            })
            .collect(),
    );
    for row in rows {
        out += &line(
            (0..headers.len())
                .map(|i| pad(i, row.get(i).map(String::as_str).unwrap_or("")))
                .collect(),
        );
    }
    out
}

/// A JSON number (JSON has no NaN or infinity: those become null).
pub fn json_number(x: f64) -> String {
    if x.is_finite() {
        // Six significant digits is more than any of these measurements can claim.
        let s = format!("{x:.5e}");
        let v: f64 = s.parse().unwrap_or(x);
        format!("{v}")
    } else {
        "null".to_owned()
    }
}

/// A JSON string: the checker's, shared (see `conformance::json_string` for why the JSON here
/// is written by hand).
pub use conformance::json_string;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thousands_groups_by_three() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(1234567), "1,234,567");
    }

    #[test]
    fn three_significant_digits() {
        assert_eq!(sig3(0.012345), "0.0123");
        assert_eq!(sig3(2.5), "2.50");
        assert_eq!(sig3(35.0), "35.0");
        assert_eq!(sig3(935.2), "935");
        assert_eq!(sig3(12345.6), "12,346");
        assert_eq!(sig3(0.0), "0.00");
        assert_eq!(sig3(f64::NAN), "–");
    }

    #[test]
    fn markdown_tables_align() {
        let t = markdown(
            &["server", "rt/s"],
            &[
                vec!["epoll".into(), "51,000".into()],
                vec!["select".into(), "9".into()],
            ],
        );
        assert_eq!(
            t,
            "| server |   rt/s |\n\
             | ------ | -----: |\n\
             | epoll  | 51,000 |\n\
             | select |      9 |\n"
        );
    }

    #[test]
    fn json_values() {
        assert_eq!(json_number(0.5), "0.5");
        assert_eq!(json_number(1.0 / 3.0), "0.333333");
        assert_eq!(json_number(f64::INFINITY), "null");
        assert_eq!(json_string("a\"b\\c\nd"), r#""a\"b\\c\nd""#);
    }
}
