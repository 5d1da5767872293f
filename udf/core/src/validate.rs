//! Field checks and the reasons a record is invalid.

use crate::Country;
use crate::country_codes::ISO_3166;
use core::fmt;

/// Largest record accepted, in bytes.
pub const MAX_RECORD_BYTES: usize = 4096;
/// Largest `ad_id`, in bytes.
pub const MAX_AD_ID_BYTES: usize = 64;
/// Largest `user_id`, in bytes.
pub const MAX_USER_ID_BYTES: usize = 128;
/// Largest `event_id`, in bytes.
pub const MAX_EVENT_ID_BYTES: usize = 128;
/// Earliest accepted click time: 1900-01-01T00:00:00Z.
pub const MIN_TIMESTAMP_MS: i64 = -2_208_988_800_000;
/// First rejected click time: 2200-01-01T00:00:00Z.
pub const END_TIMESTAMP_MS: i64 = 7_258_118_400_000;

/// A field of a click record.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[allow(missing_docs)]
pub enum Field {
    AdId,
    ClickTimestamp,
    UserId,
    Ip,
    Country,
    EventId,
}

impl Field {
    /// The field's name in records.
    pub fn name(self) -> &'static str {
        match self {
            Field::AdId => "ad_id",
            Field::ClickTimestamp => "click_timestamp",
            Field::UserId => "user_id",
            Field::Ip => "ip",
            Field::Country => "country",
            Field::EventId => "event_id",
        }
    }

    const ALL: [Field; 6] = [
        Field::AdId,
        Field::ClickTimestamp,
        Field::UserId,
        Field::Ip,
        Field::Country,
        Field::EventId,
    ];
}

/// Why a record is not a valid click. Checks run in this order, and the
/// first that fails names the reason:
/// size → UTF-8 → shape → each field in record order (missing, wrong type,
/// oversize, then its own check) → timestamp against the record time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum InvalidReason {
    /// The record is larger than [`MAX_RECORD_BYTES`].
    OversizeRecord,
    /// The record is not UTF-8.
    NotUtf8,
    /// Not a JSON object, or a line without 5 or 6 comma-separated fields.
    Malformed,
    /// A required field is absent or empty.
    MissingField(Field),
    /// A field has the wrong JSON type.
    WrongType(Field),
    /// A field is longer than its limit.
    OversizeField(Field),
    /// `ad_id` has a character outside `[A-Za-z0-9._:-]`.
    BadAdId,
    /// `user_id` has a control character.
    BadUserId,
    /// `event_id` has a control character.
    BadEventId,
    /// `click_timestamp` is not a time in a known format.
    BadTimestamp,
    /// `click_timestamp` is before 1900 or from 2200 on.
    TimestampOutOfRange,
    /// `click_timestamp` is further ahead of the record's own time than
    /// `max_future_skew_ms` allows.
    TimestampInFuture,
    /// `ip` is not an IPv4 or IPv6 address.
    BadIp,
    /// The click's or heartbeat's time is more than `max_ahead_ms` past the
    /// time its partition has reached (the only reason that depends on
    /// the partition's state, given by the engine, never by the parser).
    AheadOfPartition,
    /// The click would make its partition remember more keys than
    /// `max_partition_keys` (a flood of distinct clicks within the dedup
    /// horizon); given by the engine.
    TooManyKeys,
    /// The click would make its partition hold more counts than
    /// `max_partition_cells` (a flood of distinct ad ids in the open
    /// windows); given by the engine.
    TooManyCells,
    /// `country` is not an ISO 3166-1 alpha-2 or alpha-3 code (or `ZZZ`).
    UnknownCountry,
    /// A Yahoo Streaming Benchmark event other than a `view`: only views
    /// count as clicks.
    NotAView,
}

impl InvalidReason {
    /// The field the reason is about, if it is about one.
    pub fn field(&self) -> Option<Field> {
        use InvalidReason::*;
        match *self {
            MissingField(f) | WrongType(f) | OversizeField(f) => Some(f),
            BadAdId => Some(Field::AdId),
            BadUserId => Some(Field::UserId),
            BadEventId => Some(Field::EventId),
            BadTimestamp | TimestampOutOfRange | TimestampInFuture | AheadOfPartition => {
                Some(Field::ClickTimestamp)
            }
            TooManyCells => Some(Field::AdId),
            BadIp => Some(Field::Ip),
            UnknownCountry => Some(Field::Country),
            OversizeRecord | NotUtf8 | Malformed | NotAView | TooManyKeys => None,
        }
    }

    /// Every reason a record can get (`event_id` is optional, so it is never
    /// missing; a country code of another length is unknown, not oversize).
    pub fn all() -> impl Iterator<Item = InvalidReason> {
        use InvalidReason::*;
        let fixed = [
            OversizeRecord,
            NotUtf8,
            Malformed,
            BadAdId,
            BadUserId,
            BadEventId,
            BadTimestamp,
            TimestampOutOfRange,
            TimestampInFuture,
            AheadOfPartition,
            TooManyKeys,
            TooManyCells,
            BadIp,
            UnknownCountry,
            NotAView,
        ];
        fixed.into_iter().chain(
            Field::ALL
                .into_iter()
                .flat_map(|f| [MissingField(f), WrongType(f), OversizeField(f)])
                .filter(|r| {
                    !matches!(
                        r,
                        MissingField(Field::EventId) | OversizeField(Field::Country)
                    )
                }),
        )
    }

    /// A stable machine-readable code, e.g. `missing_field:ad_id`. This is
    /// what the invalid-events table stores.
    pub fn code(&self) -> CodeDisplay {
        CodeDisplay(*self)
    }

    /// Parses a [`code`](Self::code) back.
    pub fn from_code(code: &str) -> Option<InvalidReason> {
        InvalidReason::all().find(|r| {
            use core::fmt::Write;
            let mut buf = heapless_buf::Buf::new();
            write!(buf, "{}", r.code()).is_ok() && buf.as_str() == code
        })
    }
}

/// Displays an [`InvalidReason`]'s code.
pub struct CodeDisplay(InvalidReason);

impl fmt::Display for CodeDisplay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use InvalidReason::*;
        match self.0 {
            OversizeRecord => f.write_str("oversize_record"),
            NotUtf8 => f.write_str("not_utf8"),
            Malformed => f.write_str("malformed"),
            MissingField(x) => write!(f, "missing_field:{}", x.name()),
            WrongType(x) => write!(f, "wrong_type:{}", x.name()),
            OversizeField(x) => write!(f, "oversize_field:{}", x.name()),
            BadAdId => f.write_str("bad_ad_id"),
            BadUserId => f.write_str("bad_user_id"),
            BadEventId => f.write_str("bad_event_id"),
            BadTimestamp => f.write_str("bad_timestamp"),
            TimestampOutOfRange => f.write_str("timestamp_out_of_range"),
            TimestampInFuture => f.write_str("timestamp_in_future"),
            AheadOfPartition => f.write_str("ahead_of_partition"),
            TooManyKeys => f.write_str("too_many_keys"),
            TooManyCells => f.write_str("too_many_cells"),
            BadIp => f.write_str("bad_ip"),
            UnknownCountry => f.write_str("unknown_country"),
            NotAView => f.write_str("not_a_view"),
        }
    }
}

impl fmt::Display for InvalidReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use InvalidReason::*;
        match self {
            OversizeRecord => write!(f, "record is larger than {MAX_RECORD_BYTES} bytes"),
            NotUtf8 => f.write_str("record is not UTF-8"),
            Malformed => f.write_str(
                "record is neither a JSON object nor a line of 5 or 6 comma-separated fields",
            ),
            MissingField(x) => write!(f, "field `{}` is missing or empty", x.name()),
            WrongType(x) => write!(f, "field `{}` has the wrong JSON type", x.name()),
            OversizeField(x) => write!(f, "field `{}` is too long", x.name()),
            BadAdId => f.write_str("`ad_id` may only hold A-Z a-z 0-9 . _ : -"),
            BadUserId => f.write_str("`user_id` holds a control character"),
            BadEventId => f.write_str("`event_id` holds a control character"),
            BadTimestamp => f.write_str(
                "`click_timestamp` is neither epoch milliseconds, `YYYY-MM-DD HH:MM:SS[.fff]` nor RFC 3339",
            ),
            TimestampOutOfRange => {
                f.write_str("`click_timestamp` is before 1900-01-01 or not before 2200-01-01")
            }
            TimestampInFuture => f.write_str(
                "`click_timestamp` is further ahead of the record time than max_future_skew_ms",
            ),
            AheadOfPartition => f.write_str(
                "the time is further past what its partition has reached than max_ahead_ms",
            ),
            TooManyKeys => f.write_str(
                "its partition already remembers max_partition_keys keys within the dedup horizon",
            ),
            TooManyCells => f.write_str(
                "its partition already holds max_partition_cells counts in its open windows",
            ),
            BadIp => f.write_str("`ip` is not an IPv4 or IPv6 address"),
            UnknownCountry => f.write_str("`country` is not an ISO 3166-1 code"),
            NotAView => f.write_str(
                "a Yahoo Streaming Benchmark event whose `event_type` is not `view` (only views count)",
            ),
        }
    }
}

#[cfg(feature = "std")]
impl std::error::Error for InvalidReason {}

impl serde::Serialize for InvalidReason {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&self.code())
    }
}

mod heapless_buf {
    /// A small fixed buffer for formatting codes without allocating.
    pub struct Buf {
        bytes: [u8; 48],
        len: usize,
    }
    impl Buf {
        pub fn new() -> Buf {
            Buf {
                bytes: [0; 48],
                len: 0,
            }
        }
        pub fn as_str(&self) -> &str {
            core::str::from_utf8(&self.bytes[..self.len]).unwrap_or("")
        }
    }
    impl core::fmt::Write for Buf {
        fn write_str(&mut self, s: &str) -> core::fmt::Result {
            let end = self.len + s.len();
            if end > self.bytes.len() {
                return Err(core::fmt::Error);
            }
            self.bytes[self.len..end].copy_from_slice(s.as_bytes());
            self.len = end;
            Ok(())
        }
    }
}

fn non_empty(s: &str, field: Field, max: usize) -> Result<(), InvalidReason> {
    if s.is_empty() {
        Err(InvalidReason::MissingField(field))
    } else if s.len() > max {
        Err(InvalidReason::OversizeField(field))
    } else {
        Ok(())
    }
}

pub(crate) fn ad_id(s: &str) -> Result<(), InvalidReason> {
    non_empty(s, Field::AdId, MAX_AD_ID_BYTES)?;
    if ad_id_bytes(s.as_bytes()) {
        Ok(())
    } else {
        Err(InvalidReason::BadAdId)
    }
}

/// [`ad_id`] for a text whose bytes [`ad_id_bytes`] already passed (a
/// text it was cut from): only its length is left to check.
pub(crate) fn ad_id_length(s: &str) -> Result<(), InvalidReason> {
    non_empty(s, Field::AdId, MAX_AD_ID_BYTES)
}

/// Whether every byte of `b` may be in an ad id. No early exit: the loop is
/// branch-free and the compiler widens it.
pub(crate) fn ad_id_bytes(b: &[u8]) -> bool {
    b.iter().fold(true, |ok, &c| ok & AD_ID_BYTE[c as usize])
}

/// The bytes an ad id may hold: `[A-Za-z0-9._:-]`.
const AD_ID_BYTE: [bool; 256] = {
    let mut t = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        t[b] = c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b':' | b'-');
        b += 1;
    }
    t
};

/// What the caller already knows of a text field's bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Bytes {
    /// Nothing: every check runs.
    Unchecked,
    /// Every byte is printable ASCII ([`printable_ascii`] passed on a text
    /// the field was cut from), so the field holds no control character.
    PrintableAscii,
}

/// Whether every byte of `b` is printable ASCII (0x20-0x7E), eight bytes
/// at a time. In a word whose bytes are all below 0x80, adding 0x60 sets a
/// byte's high bit exactly when it is at least 0x20, and adding 1 exactly
/// when it is 0x7F; no sum carries into the next byte. A byte of 0x80 or
/// more fails on its own high bit, whatever its carry does to the next.
pub(crate) fn printable_ascii(b: &[u8]) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let words = b.chunks_exact(8);
    let tail = words.remainder();
    let bad = words.fold(0, |bad, w| {
        let x = u64::from_le_bytes(w.try_into().expect("8 bytes"));
        bad | x | !x.wrapping_add(0x60 * ONES) | x.wrapping_add(ONES)
    });
    bad & HIGH == 0 && tail.iter().all(|c| (0x20..0x7f).contains(c))
}

/// Whether `s` has a control character (Unicode Cc: U+0000-001F,
/// U+007F-009F), by its UTF-8 bytes: the C1 range is `C2 80`-`C2 9F`.
fn has_control(s: &str) -> bool {
    let b = s.as_bytes();
    // The common case, printable ASCII, in one branch-free pass.
    if printable_ascii(b) {
        return false;
    }
    b.iter().enumerate().any(|(i, &c)| {
        c < 0x20 || c == 0x7f || (c == 0xc2 && b.get(i + 1).is_some_and(|&n| n <= 0x9f))
    })
}

pub(crate) fn user_id(s: &str, bytes: Bytes) -> Result<(), InvalidReason> {
    non_empty(s, Field::UserId, MAX_USER_ID_BYTES)?;
    if bytes == Bytes::Unchecked && has_control(s) {
        Err(InvalidReason::BadUserId)
    } else {
        Ok(())
    }
}

pub(crate) fn event_id(s: &str, bytes: Bytes) -> Result<(), InvalidReason> {
    non_empty(s, Field::EventId, MAX_EVENT_ID_BYTES)?;
    if bytes == Bytes::Unchecked && has_control(s) {
        Err(InvalidReason::BadEventId)
    } else {
        Ok(())
    }
}

/// Which upper-case alpha-3 codes are accepted: bit `a*676 + b*26 + c`
/// for the code of letters `a b c` (0-25), built at compile time from the
/// table, plus `ZZZ` ([`Country::UNSPECIFIED`]).
const ALPHA3_BITS: [u64; 275] = {
    let mut bits = [0u64; 275];
    let mut i = 0;
    while i < ISO_3166.len() {
        let n = alpha3_bit(ISO_3166[i].0.as_bytes());
        bits[n / 64] |= 1 << (n % 64);
        i += 1;
    }
    let n = alpha3_bit(b"ZZZ"); // Country::UNSPECIFIED
    bits[n / 64] |= 1 << (n % 64);
    bits
};

/// The bit of an upper-case alpha-3 code in [`ALPHA3_BITS`].
const fn alpha3_bit(b: &[u8]) -> usize {
    (b[0] - b'A') as usize * 676 + (b[1] - b'A') as usize * 26 + (b[2] - b'A') as usize
}

/// An alpha-3 or alpha-2 code, in either case, as text or bytes: a code
/// that is not ASCII is unknown.
#[inline]
pub(crate) fn country(code: impl AsRef<[u8]>) -> Result<Country, InvalidReason> {
    match *code.as_ref() {
        [] => Err(InvalidReason::MissingField(Field::Country)),
        // One bit test, in either case.
        [a, b, c] => {
            let code = [a, b, c].map(|x| x.to_ascii_uppercase());
            let known = code.iter().all(u8::is_ascii_uppercase) && {
                let n = alpha3_bit(&code);
                ALPHA3_BITS[n / 64] & (1 << (n % 64)) != 0
            };
            if known {
                Ok(Country::from_alpha3(code))
            } else {
                Err(InvalidReason::UnknownCountry)
            }
        }
        [a, b] => {
            let code = [a.to_ascii_uppercase(), b.to_ascii_uppercase()];
            ISO_3166
                .iter()
                .find(|(_, a2)| a2.as_bytes() == code)
                .map(|(a3, _)| {
                    let b = a3.as_bytes();
                    Country::from_alpha3([b[0], b[1], b[2]])
                })
                .ok_or(InvalidReason::UnknownCountry)
        }
        _ => Err(InvalidReason::UnknownCountry),
    }
}

pub(crate) fn timestamp_range(ms: i64) -> Result<(), InvalidReason> {
    if (MIN_TIMESTAMP_MS..END_TIMESTAMP_MS).contains(&ms) {
        Ok(())
    } else {
        Err(InvalidReason::TimestampOutOfRange)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::ToString;

    #[test]
    fn codes_round_trip_and_are_unique() {
        let codes: std::vec::Vec<_> = InvalidReason::all().map(|r| r.code().to_string()).collect();
        let mut sorted = codes.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), codes.len());
        for r in InvalidReason::all() {
            assert_eq!(InvalidReason::from_code(&r.code().to_string()), Some(r));
        }
    }

    #[test]
    fn control_characters_by_bytes() {
        for c in (0..=0x10ffffu32).filter_map(char::from_u32) {
            let mut buf = [0u8; 4];
            let s = c.encode_utf8(&mut buf);
            assert_eq!(has_control(s), c.is_control(), "{c:?}");
        }
    }

    /// Every byte value at every position of texts up to 20 bytes long,
    /// among printable neighbours: the word test agrees with a byte test.
    #[test]
    fn printable_ascii_by_words_agrees_with_bytes() {
        for len in 1..=20 {
            for at in 0..len {
                for c in 0..=255u8 {
                    let mut b = [b'~'; 20];
                    b[..len]
                        .iter_mut()
                        .enumerate()
                        .for_each(|(i, x)| *x = b' ' + i as u8);
                    b[at] = c;
                    let b = &b[..len];
                    let want = b.iter().all(|c| (0x20..0x7f).contains(c));
                    assert_eq!(printable_ascii(b), want, "{b:?}");
                }
            }
        }
        assert!(printable_ascii(b""));
    }

    #[test]
    fn every_alpha3_code_and_nothing_else() {
        for a in b'A'..=b'Z' {
            for b in b'A'..=b'Z' {
                for c in b'A'..=b'Z' {
                    let code = [a, b, c];
                    let s = core::str::from_utf8(&code).unwrap();
                    let known = ISO_3166.iter().any(|(a3, _)| a3.as_bytes() == code) || s == "ZZZ";
                    assert_eq!(country(s).is_ok(), known, "{s}");
                }
            }
        }
    }

    #[test]
    fn countries() {
        assert_eq!(country("USA").unwrap().as_str(), "USA");
        assert_eq!(country("us").unwrap().as_str(), "USA");
        assert_eq!(country("gb").unwrap().as_str(), "GBR");
        assert_eq!(country("XXX"), Err(InvalidReason::UnknownCountry));
        assert_eq!(country("zzz"), Ok(Country::UNSPECIFIED));
        assert_eq!(country("GPB"), Err(InvalidReason::UnknownCountry));
    }
}
