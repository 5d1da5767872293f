//! Parsing records: JSON objects and the log line format.

use crate::validate::{self, Field, InvalidReason, MAX_RECORD_BYTES};
use crate::{Click, ClickRef, EventTime, IpAddr};
use serde_json::Value;
use time::format_description::well_known::Rfc3339;
use time::macros::format_description;

/// What a valid record says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Record {
    /// An ad click.
    Click(Click),
    /// The producer promises no click older than this is coming on this
    /// partition; it advances the watermark like a click would.
    Heartbeat(EventTime),
}

/// Parses and validates one record.
///
/// `record_time_ms` is the time the record itself carries (the Kafka
/// message timestamp); when given, a click more than `max_future_skew_ms`
/// ahead of it is invalid ([`InvalidReason::TimestampInFuture`]).
///
/// ```
/// use adtally_core::{parse_record, InvalidReason, Field, Record};
/// let r = parse_record(b"[AdClickEvent] ad001, 2021-01-01 00:00:01, user1, 207.148.22.22, USA", None, 0).unwrap();
/// let Record::Click(c) = r else { panic!() };
/// assert_eq!(c.timestamp.0, 1_609_459_201_000);
/// assert_eq!(
///     parse_record(br#"{"ad_id":"ad001","user_id":"u","ip":"1.2.3.4","country":"USA"}"#, None, 0),
///     Err(InvalidReason::MissingField(Field::ClickTimestamp)),
/// );
/// ```
pub fn parse_record(
    payload: &[u8],
    record_time_ms: Option<i64>,
    max_future_skew_ms: i64,
) -> Result<Record, InvalidReason> {
    Ok(
        match parse_borrowed(payload, record_time_ms, max_future_skew_ms)? {
            Parsed::Click(c) => Record::Click(c.to_click()),
            Parsed::Owned(c) => Record::Click(c),
            Parsed::Heartbeat(t) => Record::Heartbeat(t),
        },
    )
}

/// Where a producer sends a record so that the core's per-partition rules
/// hold: every click of an ad, and so every repeat of a click, in one
/// partition; heartbeats in every partition (each partition's watermark
/// needs them).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Routing {
    /// A click: key it by its ad.
    ByAd(crate::AdId),
    /// A heartbeat: send it to every partition.
    EveryPartition,
    /// An invalid record: any partition side-lines it with its reason.
    AnyPartition,
}

/// The [`Routing`] of a payload, by [`parse_record`] without a record time.
///
/// ```
/// use adtally_core::{routing, Routing};
/// assert!(matches!(routing(b"ad7, 1000, u, 1.1.1.1, USA"), Routing::ByAd(a) if a.as_str() == "ad7"));
/// assert_eq!(routing(b"[Heartbeat] 1000"), Routing::EveryPartition);
/// assert_eq!(routing(b", 1, u"), Routing::AnyPartition);
/// ```
pub fn routing(payload: &[u8]) -> Routing {
    match parse_record(payload, None, 0) {
        Ok(Record::Click(c)) => Routing::ByAd(c.ad_id),
        Ok(Record::Heartbeat(_)) => Routing::EveryPartition,
        Err(_) => Routing::AnyPartition,
    }
}

/// A parsed record: log lines borrow from the payload, JSON (which may
/// escape its strings) is owned.
pub(crate) enum Parsed<'a> {
    Click(ClickRef<'a>),
    Owned(Click),
    Heartbeat(EventTime),
}

/// [`parse_record`] without copying the text fields of log lines.
pub(crate) fn parse_borrowed(
    payload: &[u8],
    record_time_ms: Option<i64>,
    max_future_skew_ms: i64,
) -> Result<Parsed<'_>, InvalidReason> {
    if payload.len() > MAX_RECORD_BYTES {
        return Err(InvalidReason::OversizeRecord);
    }
    let text = core::str::from_utf8(payload).map_err(|_| InvalidReason::NotUtf8)?;
    let text = text.trim();
    let record = if text.starts_with('{') {
        parse_json(text)?
    } else {
        parse_line(text)?
    };
    // Heartbeats obey the same time checks as clicks.
    let t = match &record {
        Parsed::Click(c) => c.timestamp,
        Parsed::Owned(c) => c.timestamp,
        Parsed::Heartbeat(t) => *t,
    };
    if let Some(rt) = record_time_ms {
        if t.0 > rt.saturating_add(max_future_skew_ms) {
            return Err(InvalidReason::TimestampInFuture);
        }
    }
    Ok(record)
}

/// The raw text of each field, before its own checks.
struct Fields<'a> {
    ad_id: Option<&'a str>,
    timestamp: Option<Timestamp<'a>>,
    user_id: Option<&'a str>,
    ip: Option<&'a str>,
    country: Option<&'a str>,
    event_id: Option<&'a str>,
    /// A missing country is `ZZZ` (Yahoo Streaming Benchmark events have none).
    country_optional: bool,
}

enum Timestamp<'a> {
    Ms(i64),
    Text(&'a str),
}

fn parse_json(text: &str) -> Result<Parsed<'static>, InvalidReason> {
    let value: Value = serde_json::from_str(text).map_err(|_| InvalidReason::Malformed)?;
    let Value::Object(map) = value else {
        return Err(InvalidReason::Malformed);
    };
    if let Some(hb) = map.get("heartbeat_ms") {
        if map.contains_key("ad_id") {
            return Err(InvalidReason::Malformed);
        }
        let ms = hb.as_i64().ok_or(InvalidReason::BadTimestamp)?;
        validate::timestamp_range(ms)?;
        return Ok(Parsed::Heartbeat(EventTime(ms)));
    }
    // A Yahoo Streaming Benchmark event: its own field names for time and
    // ip, and only its views are clicks.
    let ysb = map.contains_key("event_type");
    if ysb && map.get("event_type").and_then(Value::as_str) != Some("view") {
        return Err(InvalidReason::NotAView);
    }
    let key = |f: Field| match (ysb, f) {
        (true, Field::ClickTimestamp) => "event_time",
        (true, Field::Ip) => "ip_address",
        _ => f.name(),
    };
    let text_field = |f: Field| -> Result<Option<&str>, InvalidReason> {
        match map.get(key(f)) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.as_str())),
            Some(_) => Err(InvalidReason::WrongType(f)),
        }
    };
    let ad_id = text_field(Field::AdId)?;
    let timestamp = match map.get(key(Field::ClickTimestamp)) {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(Timestamp::Text(s.as_str())),
        Some(Value::Number(n)) => Some(Timestamp::Ms(json_ms(n)?)),
        Some(_) => return Err(InvalidReason::WrongType(Field::ClickTimestamp)),
    };
    let fields = Fields {
        ad_id,
        timestamp,
        user_id: text_field(Field::UserId)?,
        ip: text_field(Field::Ip)?,
        country: text_field(Field::Country)?,
        event_id: text_field(Field::EventId)?,
        country_optional: ysb,
    };
    build(fields).map(|c| Parsed::Owned(c.to_click()))
}

/// A JSON number as milliseconds: integers, and floats without a fraction
/// (a common producer quirk).
fn json_ms(n: &serde_json::Number) -> Result<i64, InvalidReason> {
    if let Some(ms) = n.as_i64() {
        return Ok(ms);
    }
    match n.as_f64() {
        Some(f) if n.as_u64().is_none() && (f as i64) as f64 == f => Ok(f as i64),
        Some(_) if n.as_u64().is_some() => Err(InvalidReason::TimestampOutOfRange),
        _ => Err(InvalidReason::BadTimestamp),
    }
}

fn parse_line(text: &str) -> Result<Parsed<'_>, InvalidReason> {
    if let Some(rest) = text.strip_prefix("[Heartbeat]") {
        let ms = parse_time_text(rest.trim())?;
        validate::timestamp_range(ms)?;
        return Ok(Parsed::Heartbeat(EventTime(ms)));
    }
    let text = text.strip_prefix("[AdClickEvent]").unwrap_or(text);
    let mut parts = [""; 6];
    let mut n = 0;
    for part in text.split(',') {
        if n == parts.len() {
            return Err(InvalidReason::Malformed);
        }
        parts[n] = part.trim();
        n += 1;
    }
    if n < 5 {
        return Err(InvalidReason::Malformed);
    }
    let fields = Fields {
        ad_id: Some(parts[0]),
        timestamp: Some(Timestamp::Text(parts[1])),
        user_id: Some(parts[2]),
        ip: Some(parts[3]),
        country: Some(parts[4]),
        event_id: (n == 6).then_some(parts[5]),
        country_optional: false,
    };
    build(fields).map(Parsed::Click)
}

fn build(f: Fields<'_>) -> Result<ClickRef<'_>, InvalidReason> {
    let ad_id = f.ad_id.ok_or(InvalidReason::MissingField(Field::AdId))?;
    validate::ad_id(ad_id)?;
    let ms = match f.timestamp {
        None => return Err(InvalidReason::MissingField(Field::ClickTimestamp)),
        Some(Timestamp::Ms(ms)) => ms,
        Some(Timestamp::Text("")) => {
            return Err(InvalidReason::MissingField(Field::ClickTimestamp));
        }
        Some(Timestamp::Text(s)) => parse_time_text(s)?,
    };
    validate::timestamp_range(ms)?;
    let user_id = f
        .user_id
        .ok_or(InvalidReason::MissingField(Field::UserId))?;
    validate::user_id(user_id, validate::Bytes::Unchecked)?;
    let ip = match f.ip {
        None | Some("") => return Err(InvalidReason::MissingField(Field::Ip)),
        Some(s) if s.len() > 45 => return Err(InvalidReason::OversizeField(Field::Ip)),
        Some(s) => {
            crate::event::canonical_ip(s.parse::<IpAddr>().map_err(|_| InvalidReason::BadIp)?)
        }
    };
    let country = match f.country {
        None if f.country_optional => crate::Country::UNSPECIFIED,
        c => validate::country(c.unwrap_or(""))?,
    };
    let event_id = match f.event_id {
        None => None,
        // An empty sixth field or empty JSON string means "no event id".
        Some("") => None,
        Some(s) => {
            validate::event_id(s, validate::Bytes::Unchecked)?;
            Some(s)
        }
    };
    Ok(ClickRef {
        ad_id,
        timestamp: EventTime(ms),
        user_id,
        ip,
        country,
        event_id,
    })
}

/// Epoch milliseconds, `YYYY-MM-DD HH:MM:SS[.fff]` (UTC) or RFC 3339.
fn parse_time_text(s: &str) -> Result<i64, InvalidReason> {
    if s.is_empty() {
        return Err(InvalidReason::MissingField(Field::ClickTimestamp));
    }
    if s.len() > 40 {
        return Err(InvalidReason::OversizeField(Field::ClickTimestamp));
    }
    let digits = s.strip_prefix('-').unwrap_or(s);
    if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
        return s
            .parse::<i64>()
            .map_err(|_| InvalidReason::TimestampOutOfRange);
    }
    let plain = format_description!("[year]-[month]-[day] [hour]:[minute]:[second]");
    let fraction = format_description!("[year]-[month]-[day] [hour]:[minute]:[second].[subsecond]");
    let ms_of = |ns: i128| (ns.div_euclid(1_000_000)) as i64;
    if let Ok(t) = time::PrimitiveDateTime::parse(s, plain) {
        return Ok(ms_of(t.assume_utc().unix_timestamp_nanos()));
    }
    if let Ok(t) = time::PrimitiveDateTime::parse(s, fraction) {
        return Ok(ms_of(t.assume_utc().unix_timestamp_nanos()));
    }
    if let Ok(t) = time::OffsetDateTime::parse(s, &Rfc3339) {
        return Ok(ms_of(t.unix_timestamp_nanos()));
    }
    Err(InvalidReason::BadTimestamp)
}

#[cfg(test)]
mod tests {
    use super::{Routing, routing};

    #[test]
    fn clicks_are_routed_by_their_ad_id_as_written() {
        let ad = |line: &[u8]| match routing(line) {
            Routing::ByAd(a) => Some(a.as_str().to_string()),
            _ => None,
        };
        // The key `ship` gave these lines before the core routed them.
        assert_eq!(
            ad(b"ad001, 2021-01-01 00:00:01, u, 1.1.1.1, USA").as_deref(),
            Some("ad001")
        );
        assert_eq!(
            ad(b"[AdClickEvent] ad7 , 1, u, 1.1.1.1, USA").as_deref(),
            Some("ad7")
        );
        assert_eq!(
            ad(br#"  {"ad_id": "ad9", "click_timestamp": 1, "user_id": "u", "ip": "1.1.1.1", "country": "USA"}"#).as_deref(),
            Some("ad9")
        );
        assert_eq!(routing(br#"{"heartbeat_ms": 5}"#), Routing::EveryPartition);
        assert_eq!(routing(b"ad1, 1, u, 1.1.1.1, XX"), Routing::AnyPartition);
    }

    use super::*;
    use alloc::string::ToString;

    fn click(s: &str) -> Result<Click, InvalidReason> {
        match parse_record(s.as_bytes(), None, 0)? {
            Record::Click(c) => Ok(c),
            Record::Heartbeat(_) => panic!("heartbeat"),
        }
    }

    #[test]
    fn line_and_json_agree() {
        let a =
            click("[AdClickEvent] ad001, 2021-01-01 00:00:01, user1, 207.148.22.22, USA").unwrap();
        let b = click(r#"{"ad_id":"ad001","click_timestamp":"2021-01-01T00:00:01Z","user_id":"user1","ip":"207.148.22.22","country":"US"}"#).unwrap();
        let c = click(r#"{"ad_id":"ad001","click_timestamp":1609459201000,"user_id":"user1","ip":"207.148.22.22","country":"usa"}"#).unwrap();
        assert_eq!(a, b);
        assert_eq!(a, c);
    }

    #[test]
    fn times() {
        assert_eq!(parse_time_text("1970-01-01 00:00:00.5"), Ok(500));
        assert_eq!(parse_time_text("1969-12-31 23:59:59"), Ok(-1000));
        assert_eq!(parse_time_text("-1"), Ok(-1));
        assert_eq!(
            parse_time_text("2021-13-01 00:00:00"),
            Err(InvalidReason::BadTimestamp)
        );
        assert_eq!(
            click("ad1, 2300-01-01 00:00:00, u, 1.1.1.1, USA"),
            Err(InvalidReason::TimestampOutOfRange)
        );
    }

    #[test]
    fn reasons() {
        use InvalidReason::*;
        assert_eq!(click("ad1, 0, u, 1.1.1.1"), Err(Malformed));
        assert_eq!(click("ad 1, 0, u, 1.1.1.1, USA"), Err(BadAdId));
        assert_eq!(click("ad1, 0, u, 1.1.1.x, USA"), Err(BadIp));
        assert_eq!(
            click("ad1, 0, u, ::ffff:1.1.1.1, USA")
                .unwrap()
                .ip
                .to_string(),
            "1.1.1.1"
        );
        assert_eq!(
            click("ad1, 0, , 1.1.1.1, USA"),
            Err(MissingField(Field::UserId))
        );
        assert_eq!(click(r#"{"ad_id":1}"#), Err(WrongType(Field::AdId)));
        assert_eq!(click("[1,2]"), Err(Malformed));
        assert_eq!(
            parse_record(b"ad1, 100000, u, 1.1.1.1, USA", Some(0), 1000),
            Err(TimestampInFuture)
        );
        assert_eq!(parse_record(&[0xff, 0xfe], None, 0), Err(NotUtf8));
    }
}
