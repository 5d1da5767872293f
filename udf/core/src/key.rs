//! The event key: what makes two clicks the same click.

use crate::{Click, ClickRef};
use core::fmt;
use serde::Serialize;
use xxhash_rust::xxh3::xxh3_128;

/// Room for the hashed fields of any valid click.
const KEY_BUF: usize = 320;

/// A buffer in which clicks' keys are hashed, cleared once and reused: in
/// WebAssembly, clearing it for every click is a `memory.fill` call out of
/// the module per click.
pub(crate) struct KeyBuf([u8; KEY_BUF]);

impl KeyBuf {
    pub(crate) fn new() -> KeyBuf {
        KeyBuf([0; KEY_BUF])
    }
}

/// A click's 128-bit identity: XXH3-128 of its `event_id` when it has one,
/// else of (ad_id, user_id, canonical ip, click time floored to the second).
/// Displayed as 32 lower-case hex digits.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EventKey(pub u128);

impl Serialize for EventKey {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl EventKey {
    /// The key of a click.
    ///
    /// ```
    /// use adtally_core::{parse_record, EventKey, Record};
    /// let key = |s: &str| match parse_record(s.as_bytes(), None, 0).unwrap() {
    ///     Record::Click(c) => EventKey::of(&c),
    ///     _ => unreachable!(),
    /// };
    /// // Same second, same click.
    /// assert_eq!(key("ad1, 1000, u, 1.1.1.1, USA"), key("ad1, 1999, u, 1.1.1.1, FRA"));
    /// assert_ne!(key("ad1, 1000, u, 1.1.1.1, USA"), key("ad1, 2000, u, 1.1.1.1, USA"));
    /// ```
    pub fn of(click: &Click) -> EventKey {
        EventKey::of_ref(&click.as_click_ref())
    }

    /// The key of a borrowed click (the same as [`EventKey::of`] its owned copy).
    pub fn of_ref(click: &ClickRef<'_>) -> EventKey {
        EventKey::of_ref_in(click, &mut KeyBuf::new())
    }

    /// [`EventKey::of_ref`] in a buffer that the caller reuses for many
    /// clicks, so that it is not cleared for each.
    pub(crate) fn of_ref_in(click: &ClickRef<'_>, buf: &mut KeyBuf) -> EventKey {
        // One-shot hashing of the fields laid out in a buffer: every field
        // is bounded (see the validation limits), so they always fit.
        let buf = &mut buf.0;
        let mut n = 0;
        let mut put = |bytes: &[u8]| {
            copy_short(&mut buf[n..n + bytes.len()], bytes);
            n += bytes.len();
        };
        match click.event_id {
            Some(id) => {
                put(b"adtally/event_id\0");
                put(id.as_bytes());
            }
            None => {
                put(b"adtally/click\0");
                put(click.ad_id.as_bytes());
                put(b"\0");
                put(click.user_id.as_bytes());
                put(b"\0");
                match click.ip {
                    crate::IpAddr::V4(v4) => {
                        put(&[4]);
                        put(&v4.octets());
                    }
                    crate::IpAddr::V6(v6) => {
                        put(&[6]);
                        put(&v6.octets());
                    }
                }
                put(&click.timestamp.0.div_euclid(1000).to_le_bytes());
            }
        }
        EventKey(xxh3_128(&buf[..n]))
    }

    /// Parses 32 hex digits.
    pub fn from_hex(s: &str) -> Option<EventKey> {
        if s.len() != 32 {
            return None;
        }
        u128::from_str_radix(s, 16).ok().map(EventKey)
    }
}

/// `dst.copy_from_slice(src)` for short fields (a click's, a rollup's ad
/// id), in at most four fixed-size moves (overlapping when the length is
/// not a power of two) rather than a call to `memcpy` per field.
#[inline(always)]
pub(crate) fn copy_short(dst: &mut [u8], src: &[u8]) {
    fn fixed<const N: usize>(dst: &mut [u8], src: &[u8], at: usize) {
        dst[at..at + N].copy_from_slice(&src[at..at + N]);
    }
    let n = src.len();
    match n {
        0 => {}
        1..4 => {
            dst[0] = src[0];
            dst[n / 2] = src[n / 2];
            dst[n - 1] = src[n - 1];
        }
        4..8 => {
            fixed::<4>(dst, src, 0);
            fixed::<4>(dst, src, n - 4);
        }
        8..16 => {
            fixed::<8>(dst, src, 0);
            fixed::<8>(dst, src, n - 8);
        }
        16..32 => {
            fixed::<16>(dst, src, 0);
            fixed::<16>(dst, src, n - 16);
        }
        _ => dst.copy_from_slice(src),
    }
}

impl fmt::Display for EventKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Byte by byte: `{:032x}` of a u128 goes through the generic integer
        // formatting, which in WebAssembly cost a ClickHouse query more
        // than parsing the record did.
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        let mut hex = [0u8; 32];
        for (pair, byte) in hex.chunks_exact_mut(2).zip(self.0.to_be_bytes()) {
            pair[0] = DIGITS[usize::from(byte >> 4)];
            pair[1] = DIGITS[usize::from(byte & 0xf)];
        }
        f.write_str(core::str::from_utf8(&hex).expect("hex digits are ASCII"))
    }
}

impl fmt::Debug for EventKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "EventKey({self})")
    }
}
