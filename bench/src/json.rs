//! Reading back `results.json` (what `bench report` wrote), so that `bench report --replot`
//! can redraw every table and plot without measuring again. A small reader for the JSON this
//! crate writes: objects, arrays, strings, numbers, `null`; enough, and no dependency.

use anyhow::{Context, bail};

#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Bool(bool),
    Number(f64),
    String(String),
    Array(Vec<Value>),
    Object(Vec<(String, Value)>),
}

impl Value {
    pub fn get(&self, key: &str) -> anyhow::Result<&Value> {
        match self {
            Value::Object(fields) => fields
                .iter()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v)
                .with_context(|| format!("no field \"{key}\"")),
            _ => bail!("looking for \"{key}\" in something that is not an object"),
        }
    }
    /// A number; `null` (how NaN and infinities are written) reads as NaN.
    pub fn num(&self, key: &str) -> anyhow::Result<f64> {
        match self.get(key)? {
            Value::Number(x) => Ok(*x),
            Value::Null => Ok(f64::NAN),
            other => bail!("\"{key}\" is not a number: {other:?}"),
        }
    }
    pub fn str(&self, key: &str) -> anyhow::Result<&str> {
        match self.get(key)? {
            Value::String(s) => Ok(s),
            other => bail!("\"{key}\" is not a string: {other:?}"),
        }
    }
    pub fn array(&self, key: &str) -> anyhow::Result<&[Value]> {
        match self.get(key)? {
            Value::Array(items) => Ok(items),
            other => bail!("\"{key}\" is not an array: {other:?}"),
        }
    }
}

pub fn parse(text: &str) -> anyhow::Result<Value> {
    let mut p = Parser {
        chars: text.chars().collect(),
        at: 0,
    };
    let v = p.value()?;
    p.blank();
    if p.at != p.chars.len() {
        bail!(
            "unexpected text after the JSON value, at character {}",
            p.at
        );
    }
    Ok(v)
}

struct Parser {
    chars: Vec<char>,
    at: usize,
}

impl Parser {
    fn blank(&mut self) {
        while self.chars.get(self.at).is_some_and(|c| c.is_whitespace()) {
            self.at += 1;
        }
    }
    fn eat(&mut self, c: char) -> anyhow::Result<()> {
        self.blank();
        if self.chars.get(self.at) != Some(&c) {
            bail!("expected '{c}' at character {}", self.at);
        }
        self.at += 1;
        Ok(())
    }
    fn word(&mut self, w: &str, v: Value) -> anyhow::Result<Value> {
        for c in w.chars() {
            self.eat(c)?;
        }
        Ok(v)
    }
    /// The items of an object or array, from its opening bracket (at `self.at`) to `close`.
    fn sequence(
        &mut self,
        close: char,
        mut item: impl FnMut(&mut Parser) -> anyhow::Result<()>,
    ) -> anyhow::Result<()> {
        self.at += 1;
        self.blank();
        if self.chars.get(self.at) == Some(&close) {
            self.at += 1;
            return Ok(());
        }
        loop {
            item(self)?;
            self.blank();
            match self.chars.get(self.at) {
                Some(',') => self.at += 1,
                Some(&c) if c == close => {
                    self.at += 1;
                    return Ok(());
                }
                _ => bail!("expected ',' or '{close}' at character {}", self.at),
            }
        }
    }

    fn value(&mut self) -> anyhow::Result<Value> {
        self.blank();
        match self.chars.get(self.at) {
            Some('{') => {
                let mut fields = Vec::new();
                self.sequence('}', |p| {
                    p.blank();
                    let Value::String(key) = p.value()? else {
                        bail!("an object key that is not a string, at character {}", p.at);
                    };
                    p.eat(':')?;
                    fields.push((key, p.value()?));
                    Ok(())
                })?;
                Ok(Value::Object(fields))
            }
            Some('[') => {
                let mut items = Vec::new();
                self.sequence(']', |p| {
                    items.push(p.value()?);
                    Ok(())
                })?;
                Ok(Value::Array(items))
            }
            Some('"') => {
                self.at += 1;
                let mut s = String::new();
                loop {
                    let c = *self.chars.get(self.at).context("unterminated string")?;
                    self.at += 1;
                    match c {
                        '"' => return Ok(Value::String(s)),
                        '\\' => {
                            let e = *self.chars.get(self.at).context("unterminated escape")?;
                            self.at += 1;
                            s.push(match e {
                                'n' => '\n',
                                't' => '\t',
                                'r' => '\r',
                                'b' => '\u{8}',
                                'f' => '\u{c}',
                                'u' => {
                                    let hex: String =
                                        self.chars.iter().skip(self.at).take(4).collect();
                                    self.at += 4;
                                    u32::from_str_radix(&hex, 16)
                                        .ok()
                                        .and_then(char::from_u32)
                                        .unwrap_or('\u{fffd}')
                                }
                                other => other,
                            });
                        }
                        c => s.push(c),
                    }
                }
            }
            Some('n') => self.word("null", Value::Null),
            Some('t') => self.word("true", Value::Bool(true)),
            Some('f') => self.word("false", Value::Bool(false)),
            Some(_) => {
                let start = self.at;
                while self
                    .chars
                    .get(self.at)
                    .is_some_and(|c| c.is_ascii_digit() || "+-.eE".contains(*c))
                {
                    self.at += 1;
                }
                let text: String = self.chars[start..self.at].iter().collect();
                text.parse()
                    .map(Value::Number)
                    .with_context(|| format!("not a JSON value at character {start}: {text:?}"))
            }
            None => bail!("unexpected end of the JSON text"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_what_the_report_writes() {
        let v =
            parse(r#"{"a": [1, -2.5e3, null], "b": "x\"y\\n\u00e9", "c": {}, "d": true}"#).unwrap();
        assert_eq!(
            v.get("a").unwrap(),
            &Value::Array(vec![
                Value::Number(1.0),
                Value::Number(-2500.0),
                Value::Null
            ])
        );
        assert_eq!(v.str("b").unwrap(), "x\"y\\né");
        assert!(v.num("a").is_err());
        assert!(parse("{\"a\": 1,}").is_err());
        assert!(parse("[1] 2").is_err());
    }
}
