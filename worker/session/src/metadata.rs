//! Session call metadata: repeated values, and the URL-query escaping that
//! BuildKit applies to values that are not plain ASCII (`<key>-encoded: 1`).

use percent_encoding::{percent_decode_str, utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use tonic::metadata::{AsciiMetadataKey, AsciiMetadataValue, MetadataMap};
use tonic::Status;

use crate::error::{Result, SessionError};

/// Characters Go's `url.QueryEscape` escapes (space is handled apart).
const QUERY: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// `url.QueryEscape`.
fn query_escape(s: &str) -> String {
    utf8_percent_encode(s, QUERY)
        .to_string()
        .replace("%20", "+")
}

/// `url.QueryUnescape`; `None` when the escapes are not valid UTF-8.
fn query_unescape(s: &str) -> Option<String> {
    percent_decode_str(&s.replace('+', " "))
        .decode_utf8()
        .ok()
        .map(|c| c.into_owned())
}

/// Appends one header value per entry of `values` under `key`, escaping
/// them all (and adding `<key>-encoded: 1`) if any is not printable ASCII.
pub(crate) fn append_values(md: &mut MetadataMap, key: &str, values: &[String]) -> Result<()> {
    if values.is_empty() {
        return Ok(());
    }
    let bad = || SessionError::Metadata {
        key: key.to_string(),
    };
    let name: AsciiMetadataKey = key.parse().map_err(|_| bad())?;
    let encode = values
        .iter()
        .any(|v| v.bytes().any(|b| !(0x20..0x7f).contains(&b)));
    for v in values {
        let v = if encode { query_escape(v) } else { v.clone() };
        let value: AsciiMetadataValue = v.parse().map_err(|_| bad())?;
        md.append(name.clone(), value);
    }
    if encode {
        let enc: AsciiMetadataKey = format!("{key}-encoded").parse().map_err(|_| bad())?;
        md.insert(enc, AsciiMetadataValue::from_static("1"));
    }
    Ok(())
}

/// Every value of `key`, unescaped when `<key>-encoded` is `1`.
pub(crate) fn values(md: &MetadataMap, key: &str) -> Result<Vec<String>, Status> {
    let encoded = md
        .get(format!("{key}-encoded").as_str())
        .and_then(|v| v.to_str().ok())
        == Some("1");
    let invalid = || Status::invalid_argument(format!("invalid metadata value for {key}"));
    md.get_all(key)
        .iter()
        .map(|v| {
            let v = v.to_str().map_err(|_| invalid())?;
            if encoded {
                query_unescape(v).ok_or_else(invalid)
            } else {
                Ok(v.to_string())
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_round_trip_with_escaping_only_when_needed() {
        let mut md = MetadataMap::new();
        let plain = vec!["*.md".to_string(), "!keep me.md".to_string()];
        let fancy = vec!["naïve/*.txt".to_string(), "a+b c".to_string()];
        append_values(&mut md, "exclude-patterns", &plain).expect("plain");
        append_values(&mut md, "include-patterns", &fancy).expect("fancy");
        assert!(md.get("exclude-patterns-encoded").is_none());
        assert_eq!(
            md.get("include-patterns-encoded")
                .and_then(|v| v.to_str().ok()),
            Some("1")
        );
        let raw: Vec<_> = md.get_all("include-patterns").iter().collect();
        assert_eq!(raw[0].to_str().ok(), Some("na%C3%AFve%2F%2A.txt"));
        assert_eq!(raw[1].to_str().ok(), Some("a%2Bb+c"));
        assert_eq!(values(&md, "exclude-patterns").expect("plain"), plain);
        assert_eq!(values(&md, "include-patterns").expect("fancy"), fancy);
        assert!(values(&md, "followpaths").expect("none").is_empty());
    }
}
