//! Reading back `results.json` (what `bench report` wrote), so that `bench report --replot`
//! can redraw every table and plot without measuring again: serde_json parses it, and these
//! accessors say which field was missing or of the wrong kind.
//!
//! The JSON is still written by hand (`LoadResult::to_json`, `report::write_json`): it is a few
//! flat objects whose keys are printed in the order of the tables, where serde_json's map would
//! sort them, and the checker, which writes JSON too, needs no serde at all.

use anyhow::{Context, bail};

pub use serde_json::Value;

pub fn parse(text: &str) -> anyhow::Result<Value> {
    Ok(serde_json::from_str(text)?)
}

/// Typed fields of a JSON object, with errors that name the field.
pub trait Fields {
    fn field(&self, key: &str) -> anyhow::Result<&Value>;
    /// A number; `null` (how NaN and infinities are written) reads as NaN.
    fn num(&self, key: &str) -> anyhow::Result<f64>;
    fn str(&self, key: &str) -> anyhow::Result<&str>;
    fn array(&self, key: &str) -> anyhow::Result<&[Value]>;
}

impl Fields for Value {
    fn field(&self, key: &str) -> anyhow::Result<&Value> {
        match self {
            Value::Object(fields) => fields
                .get(key)
                .with_context(|| format!("no field \"{key}\"")),
            _ => bail!("looking for \"{key}\" in something that is not an object"),
        }
    }
    fn num(&self, key: &str) -> anyhow::Result<f64> {
        match self.field(key)? {
            Value::Null => Ok(f64::NAN),
            other => other
                .as_f64()
                .with_context(|| format!("\"{key}\" is not a number: {other}")),
        }
    }
    fn str(&self, key: &str) -> anyhow::Result<&str> {
        let v = self.field(key)?;
        v.as_str()
            .with_context(|| format!("\"{key}\" is not a string: {v}"))
    }
    fn array(&self, key: &str) -> anyhow::Result<&[Value]> {
        let v = self.field(key)?;
        v.as_array()
            .map(Vec::as_slice)
            .with_context(|| format!("\"{key}\" is not an array: {v}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_what_the_report_writes() {
        let v =
            parse(r#"{"a": [1, -2.5e3, null], "b": "x\"y\\n\u00e9", "c": {}, "d": true}"#).unwrap();
        assert_eq!(v.array("a").unwrap().len(), 3);
        assert_eq!(v.array("a").unwrap()[1].as_f64(), Some(-2500.0));
        assert_eq!(v.str("b").unwrap(), "x\"y\\né");
        assert!(v.num("a").is_err());
        assert!(v.field("z").is_err());
        assert!(parse("{\"a\": 1,}").is_err());
        assert!(parse("[1] 2").is_err());
    }
}
