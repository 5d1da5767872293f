//! Parsed clicks in columns: how a batch of clicks crosses a boundary (the
//! component's WIT `click-batch`) as five buffers instead of an allocation
//! per click; raw records in columns (WIT `record-batch`); and rollup rows
//! in columns (WIT `rollups`), the way they come back.
//!
//! This module owns packing clicks and rollups into columns and checking
//! them back out (clicks as [`ClickRef`]s that borrow the columns), and
//! reading raw records back out of theirs; it never parses records.
//!
//! ```
//! use adtally_core::{ClickRef, Country, EventTime};
//! use adtally_core::columns::ClickColumns;
//! let usa = Country::new("USA").unwrap();
//! let click = ClickRef::new("ad1", EventTime(0), "u1", "1.2.3.4".parse().unwrap(), usa, None).unwrap();
//! let mut cols = ClickColumns::default();
//! cols.push(click).unwrap();
//! assert_eq!(cols.as_ref().clicks().unwrap(), vec![click]);
//! ```

use crate::key::copy_short;
use crate::validate::{Bytes, printable_ascii};
use crate::{
    AdId, ClickRef, EventTime, FilterId, IpAddr, Offset, Partition, RawRecord, Rollup, WindowStart,
};
use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec;
use alloc::vec::Vec;
use core::fmt;
use core::ops::Range;

/// Clicks packed column by column (the layout of WIT `click-batch`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClickColumns {
    /// Each click's ad_id, user_id and event_id (empty: none), concatenated.
    pub text: Vec<u8>,
    /// Three ends into `text` per click: of its ad_id, user_id, event_id.
    pub text_ends: Vec<u32>,
    /// Milliseconds since the Unix epoch, UTC.
    pub timestamps_ms: Vec<i64>,
    /// 16 bytes per click: the address as IPv6 (IPv4 as `::ffff:a.b.c.d`).
    pub ips: Vec<u8>,
    /// 3 bytes per click: ISO 3166-1 alpha-3.
    pub countries: Vec<u8>,
}

/// Columns borrowed from wherever they were received.
#[derive(Clone, Copy, Debug)]
pub struct ClickColumnsRef<'a> {
    /// See [`ClickColumns::text`].
    pub text: &'a [u8],
    /// See [`ClickColumns::text_ends`].
    pub text_ends: &'a [u32],
    /// See [`ClickColumns::timestamps_ms`].
    pub timestamps_ms: &'a [i64],
    /// See [`ClickColumns::ips`].
    pub ips: &'a [u8],
    /// See [`ClickColumns::countries`].
    pub countries: &'a [u8],
}

/// Columns that do not hold valid clicks; the message names the column or
/// the click, the field and its value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ColumnsError(String);

impl fmt::Display for ColumnsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl core::error::Error for ColumnsError {}

impl ClickColumns {
    /// Appends a click; refused only when the text would pass 4 GiB.
    pub fn push(&mut self, c: ClickRef<'_>) -> Result<(), ColumnsError> {
        for text in [c.ad_id, c.user_id, c.event_id.unwrap_or("")] {
            self.text.extend_from_slice(text.as_bytes());
            let end = u32::try_from(self.text.len()).map_err(|_| {
                ColumnsError(format!(
                    "click-batch: text of {} bytes does not fit 32-bit ends",
                    self.text.len()
                ))
            })?;
            self.text_ends.push(end);
        }
        self.timestamps_ms.push(c.timestamp.0);
        let v6 = match c.ip {
            IpAddr::V4(v4) => v4.to_ipv6_mapped(),
            IpAddr::V6(v6) => v6,
        };
        self.ips.extend_from_slice(&v6.octets());
        self.countries
            .extend_from_slice(c.country.as_str().as_bytes());
        Ok(())
    }

    /// How many clicks.
    pub fn len(&self) -> usize {
        self.timestamps_ms.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The columns, borrowed.
    pub fn as_ref(&self) -> ClickColumnsRef<'_> {
        ClickColumnsRef {
            text: &self.text,
            text_ends: &self.text_ends,
            timestamps_ms: &self.timestamps_ms,
            ips: &self.ips,
            countries: &self.countries,
        }
    }
}

impl<'a> ClickColumnsRef<'a> {
    /// Every click, checked like a parsed record; the error names the click,
    /// the field and its value.
    pub fn clicks(&self) -> Result<Vec<ClickRef<'a>>, ColumnsError> {
        let n = self.timestamps_ms.len();
        for (name, len, per) in [
            ("text-ends", self.text_ends.len(), 3),
            ("ips", self.ips.len(), 16),
            ("countries", self.countries.len(), 3),
        ] {
            if len != n * per {
                return Err(ColumnsError(format!(
                    "click-batch: {name} has {len} elements, {per} per click expected for {n} clicks"
                )));
            }
        }
        check_ends(self.text_ends, self.text.len(), "text-ends")?;
        // One UTF-8 check for the whole buffer: when it passes, a field is
        // UTF-8 exactly when its ends are character boundaries. When it
        // fails, each field is checked alone, so the error names the first
        // bad click, as it would have anyway.
        // Likewise one pass for control characters: when every byte is
        // printable ASCII, no user_id or event_id holds one, and the text
        // is UTF-8 without a second pass (in WebAssembly `from_utf8` reads
        // four bytes per step: about 45 instructions per click).
        let all = self.text;
        let (whole, bytes) = if printable_ascii(all) {
            // SAFETY: bytes 0x20-0x7E are ASCII characters, and ASCII is
            // UTF-8 (`printable_ascii` is tested against a byte-by-byte
            // check for every byte value at every position of a word).
            let text = unsafe { core::str::from_utf8_unchecked(all) };
            (Some(text), Bytes::PrintableAscii)
        } else {
            (core::str::from_utf8(all).ok(), Bytes::Unchecked)
        };
        let mut from = 0;
        let mut out = Vec::with_capacity(n);
        for (i, ends) in self.text_ends.chunks_exact(3).enumerate() {
            let [ad_end, user_end, event_end] = [0, 1, 2].map(|k| ends[k] as usize);
            let not_utf8 = |field: &str| ColumnsError(format!("clicks[{i}]: {field} is not UTF-8"));
            let ad_id = text_at(all, whole, from, ad_end).ok_or_else(|| not_utf8("ad_id"))?;
            let user_id =
                text_at(all, whole, ad_end, user_end).ok_or_else(|| not_utf8("user_id"))?;
            let event_id =
                text_at(all, whole, user_end, event_end).ok_or_else(|| not_utf8("event_id"))?;
            from = event_end;
            let ip: [u8; 16] = self.ips[16 * i..16 * i + 16].try_into().expect("16 bytes");
            let ip = crate::event::canonical_ip(IpAddr::from(ip));
            let code = &self.countries[3 * i..3 * i + 3];
            // Checked as bytes (a code that is not ASCII is unknown); the
            // error then says which it was.
            let country = crate::validate::country(code).map_err(|_| {
                let e = match core::str::from_utf8(code) {
                    Err(_) => "not ASCII",
                    Ok(_) => "not an ISO 3166-1 code",
                };
                ColumnsError(format!("clicks[{i}]: country {code:?}: {e}"))
            })?;
            let t = EventTime(self.timestamps_ms[i]);
            let event_id = (!event_id.is_empty()).then_some(event_id);
            // Checked, then built in place: a click is too large to pass
            // through a `Result` at this rate.
            ClickRef::check(ad_id, t, user_id, event_id, bytes).map_err(|e| {
                use crate::Field;
                let v = match e.field() {
                    Some(Field::AdId) => ad_id.to_string(),
                    Some(Field::UserId) => user_id.to_string(),
                    Some(Field::EventId) => event_id.unwrap_or("").to_string(),
                    _ => t.0.to_string(),
                };
                ColumnsError(format!(
                    "clicks[{i}]: {} {v:?}: {e}",
                    e.field().map_or("click", |f| f.name())
                ))
            })?;
            out.push(ClickRef {
                ad_id,
                timestamp: t,
                user_id,
                ip,
                country,
                event_id,
            });
        }
        Ok(out)
    }
}

/// The text `from..to` of `all` (checked ends) as UTF-8: a slice of
/// `whole` when the whole text is UTF-8 (then only the ends need to be
/// character boundaries), else checked alone. Inlined: it runs three times
/// per click, and in WebAssembly each call costs an interruption check.
#[inline(always)]
fn text_at<'a>(all: &'a [u8], whole: Option<&'a str>, from: usize, to: usize) -> Option<&'a str> {
    match whole {
        Some(t) => t.get(from..to),
        None => core::str::from_utf8(&all[from..to]).ok(),
    }
}

/// Raw records borrowed column by column (the layout of WIT
/// `record-batch`): record `i` is `partitions[i]`, `offsets[i]`,
/// `record_times_ms[i]` and the payload `payload_ends` marks off in
/// `payloads`.
#[derive(Clone, Copy, Debug)]
pub struct RecordColumnsRef<'a> {
    /// Each record's partition.
    pub partitions: &'a [u32],
    /// Each record's offset.
    pub offsets: &'a [i64],
    /// The payloads, concatenated.
    pub payloads: &'a [u8],
    /// Where each payload ends in `payloads`.
    pub payload_ends: &'a [u32],
    /// Each record's Kafka timestamp, if any.
    pub record_times_ms: &'a [Option<i64>],
}

impl<'a> RecordColumnsRef<'a> {
    /// Every record, borrowing its payload; refused when the columns'
    /// lengths differ or the ends go backwards or past the payloads.
    pub fn records(&self) -> Result<Vec<RawRecord<'a>>, ColumnsError> {
        let n = self.payload_ends.len();
        same_lengths(
            "record-batch",
            ("payload-ends", n),
            [
                ("partitions", self.partitions.len()),
                ("offsets", self.offsets.len()),
                ("record-times-ms", self.record_times_ms.len()),
            ],
        )?;
        let ranges = ranges(self.payload_ends, self.payloads.len(), "payload-ends")?;
        Ok(ranges
            .enumerate()
            .map(|(i, range)| RawRecord {
                partition: Partition(self.partitions[i]),
                offset: Offset(self.offsets[i]),
                payload: &self.payloads[range],
                record_time_ms: self.record_times_ms[i],
            })
            .collect())
    }
}

/// Rollup rows packed column by column (the layout of WIT `rollups`): row
/// `i` is `window_starts[i]`, the ad id `ad_id_ends` marks off in `ad_ids`,
/// `filter_ids[i]`, `partitions[i]`, `clicks[i]` and `versions[i]`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RollupColumns {
    /// Each row's window.
    pub window_starts: Vec<i64>,
    /// Every row's ad id, concatenated.
    pub ad_ids: Vec<u8>,
    /// Where each row's ad id ends in `ad_ids`.
    pub ad_id_ends: Vec<u32>,
    /// Each row's filter.
    pub filter_ids: Vec<u32>,
    /// Each row's source partition.
    pub partitions: Vec<u32>,
    /// Each row's distinct clicks.
    pub clicks: Vec<u64>,
    /// Each row's version.
    pub versions: Vec<u32>,
}

impl RollupColumns {
    /// `rows` packed; refused only when their ad ids together pass 4 GiB.
    ///
    /// The text is sized once and each ad id moved into it with a few
    /// fixed-size moves: in WebAssembly, a copy of variable length is a
    /// call into the host, and this runs once per row.
    pub fn pack(rows: &[Rollup]) -> Result<RollupColumns, ColumnsError> {
        // Rows of one ad share its text, so the sum can pass what memory
        // holds and a 32-bit `usize`, but not a `u64`.
        let total: u64 = rows.iter().map(|r| r.ad_id.as_str().len() as u64).sum();
        let total = u32::try_from(total).map_err(|_| {
            ColumnsError(format!(
                "rollups: the ad ids of {} rows do not fit 32-bit ends",
                rows.len()
            ))
        })? as usize;
        let n = rows.len();
        let mut c = RollupColumns {
            window_starts: Vec::with_capacity(n),
            ad_ids: vec![0; total],
            ad_id_ends: Vec::with_capacity(n),
            filter_ids: Vec::with_capacity(n),
            partitions: Vec::with_capacity(n),
            clicks: Vec::with_capacity(n),
            versions: Vec::with_capacity(n),
        };
        let mut end = 0;
        for r in rows {
            let id = r.ad_id.as_str().as_bytes();
            copy_short(&mut c.ad_ids[end..end + id.len()], id);
            end += id.len();
            // At most `total`, which fits.
            c.ad_id_ends.push(end as u32);
            c.window_starts.push(r.window_start.0);
            c.filter_ids.push(r.filter_id.0);
            c.partitions.push(r.partition.0);
            c.clicks.push(r.clicks);
            c.versions.push(r.version);
        }
        Ok(c)
    }

    /// The rows, checked: refused when the columns' lengths differ, the
    /// ends go backwards or past the text, or an ad id is not valid.
    /// Consecutive rows of one ad share one [`AdId`].
    pub fn rows(&self) -> Result<Vec<Rollup>, ColumnsError> {
        let n = self.ad_id_ends.len();
        same_lengths(
            "rollups",
            ("ad-id-ends", n),
            [
                ("window-starts", self.window_starts.len()),
                ("filter-ids", self.filter_ids.len()),
                ("partitions", self.partitions.len()),
                ("clicks", self.clicks.len()),
                ("versions", self.versions.len()),
            ],
        )?;
        let mut rows: Vec<Rollup> = Vec::with_capacity(n);
        let all = &self.ad_ids[..];
        // One pass over the whole text for UTF-8 and for the bytes an ad id
        // may hold: when both pass, each id is only cut out and its length
        // checked. Otherwise each id is checked alone, and the error names
        // the first bad one, as it would have anyway.
        let whole = core::str::from_utf8(all).ok();
        let in_charset = whole.is_some_and(|t| crate::validate::ad_id_bytes(t.as_bytes()));
        let checked = |s: &str| {
            if in_charset {
                crate::validate::ad_id_length(s).map(|()| AdId(s.into()))
            } else {
                AdId::new(s)
            }
        };
        for (i, range) in ranges(&self.ad_id_ends, all.len(), "ad-id-ends")?.enumerate() {
            let bytes = &all[range.clone()];
            let ad_id = match rows.last() {
                Some(last) if last.ad_id.as_str().as_bytes() == bytes => last.ad_id.clone(),
                _ => text_at(all, whole, range.start, range.end)
                    .and_then(|s| checked(s).ok())
                    .ok_or_else(|| {
                        ColumnsError(format!(
                            "rollups[{i}]: ad_id {:?} is not valid",
                            String::from_utf8_lossy(bytes)
                        ))
                    })?,
            };
            rows.push(Rollup {
                window_start: WindowStart(self.window_starts[i]),
                ad_id,
                filter_id: FilterId(self.filter_ids[i]),
                partition: Partition(self.partitions[i]),
                clicks: self.clicks[i],
                version: self.versions[i],
            });
        }
        Ok(rows)
    }
}

/// Refuses a `batch` whose `columns` do not all have as many elements as
/// its `ends` column, one per row; the error names the first that differs.
fn same_lengths<const N: usize>(
    batch: &str,
    (ends, n): (&str, usize),
    columns: [(&str, usize); N],
) -> Result<(), ColumnsError> {
    match columns.iter().find(|&&(_, len)| len != n) {
        Some((name, len)) => Err(ColumnsError(format!(
            "{batch}: {name} has {len} elements, {ends} has {n}"
        ))),
        None => Ok(()),
    }
}

/// The ranges `ends` marks off in a buffer of `len` bytes; refused when
/// they go backwards or past the end. `what` names `ends` in the error.
pub fn ranges<'a>(
    ends: &'a [u32],
    len: usize,
    what: &'a str,
) -> Result<impl Iterator<Item = Range<usize>> + 'a, ColumnsError> {
    check_ends(ends, len, what)?;
    Ok(ends.iter().scan(0usize, |start, &e| {
        let r = *start..e as usize;
        *start = e as usize;
        Some(r)
    }))
}

/// Refuses `ends` that go backwards or past `len`.
fn check_ends(ends: &[u32], len: usize, what: &str) -> Result<(), ColumnsError> {
    if ends_fit(ends, len) {
        return Ok(());
    }
    let mut prev = 0u32;
    for (i, &e) in ends.iter().enumerate() {
        if e < prev || e as usize > len {
            return Err(ColumnsError(format!(
                "{what}[{i}] = {e}: outside {prev}..={len}"
            )));
        }
        prev = e;
    }
    Ok(())
}

/// Whether `ends` never go backwards and the last is at most `len` (then
/// none is past it), decided eight ends per step without an early exit: in
/// WebAssembly every turn of a loop costs the host's interruption check,
/// and a batch has three ends per click.
fn ends_fit(ends: &[u32], len: usize) -> bool {
    let mut prev = 0u32;
    let mut ok = true;
    let chunks = ends.chunks_exact(8);
    let rest = chunks.remainder();
    for c in chunks {
        let c: &[u32; 8] = c.try_into().expect("8 ends");
        ok &= prev <= c[0];
        for k in 0..7 {
            ok &= c[k] <= c[k + 1];
        }
        prev = c[7];
    }
    for &e in rest {
        ok &= prev <= e;
        prev = e;
    }
    ok & (prev as usize <= len)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Country;

    fn two_clicks() -> ClickColumns {
        let usa = Country::new("USA").unwrap();
        let ip = "1.2.3.4".parse().unwrap();
        let mut cols = ClickColumns::default();
        for (ad, user) in [("ad1", "u1"), ("ad2", "ü2")] {
            let c = ClickRef::new(ad, EventTime(0), user, ip, usa, None).unwrap();
            cols.push(c).unwrap();
        }
        cols
    }

    fn error(cols: &ClickColumns) -> String {
        cols.as_ref().clicks().unwrap_err().to_string()
    }

    /// Rows of ads of every length a valid id can have, two rows per ad.
    fn rollup_rows() -> Vec<Rollup> {
        let text = "ad0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ";
        (1..=crate::validate::MAX_AD_ID_BYTES)
            .flat_map(|n| {
                let ad_id = AdId::new(&text[..n]).unwrap();
                [1, 2].map(|f| Rollup {
                    window_start: WindowStart(60_000 * n as i64),
                    ad_id: ad_id.clone(),
                    filter_id: FilterId(f),
                    partition: Partition(n as u32 % 4),
                    clicks: 10 * n as u64 + u64::from(f),
                    version: f,
                })
            })
            .collect()
    }

    #[test]
    fn rollups_come_back_from_their_columns_as_they_went_in() {
        let rows = rollup_rows();
        let cols = RollupColumns::pack(&rows).unwrap();
        let text: Vec<u8> = rows.iter().flat_map(|r| r.ad_id.as_str().bytes()).collect();
        assert_eq!(cols.ad_ids, text);
        assert_eq!(cols.rows().unwrap(), rows);
        assert_eq!(RollupColumns::pack(&[]).unwrap().rows().unwrap(), vec![]);
    }

    #[test]
    fn bad_rollup_columns_say_what_is_wrong() {
        let cols = RollupColumns::pack(&rollup_rows()).unwrap();
        let error = |c: &RollupColumns| c.rows().unwrap_err().to_string();
        let mut c = cols.clone();
        c.versions.pop();
        assert_eq!(
            error(&c),
            format!(
                "rollups: versions has {} elements, ad-id-ends has {}",
                c.versions.len(),
                c.ad_id_ends.len()
            )
        );
        let mut c = cols.clone();
        c.ad_id_ends[1] = 0;
        assert_eq!(
            error(&c),
            "ad-id-ends[1] = 0: outside 1..=".to_string() + &c.ad_ids.len().to_string()
        );
        let mut c = cols.clone();
        c.ad_ids[0] = b' ';
        assert_eq!(error(&c), "rollups[0]: ad_id \" \" is not valid");
        // Every byte may be in an ad id, and UTF-8; only a length is wrong.
        let mut c = cols.clone();
        c.ad_id_ends[2] = c.ad_id_ends[1];
        assert_eq!(error(&c), "rollups[2]: ad_id \"\" is not valid");
        let mut c = cols.clone();
        let longest = c.ad_id_ends.len() - 1;
        c.ad_ids.push(b'x');
        *c.ad_id_ends.last_mut().unwrap() += 1;
        let id = String::from_utf8(c.ad_ids[c.ad_ids.len() - 65..].to_vec()).unwrap();
        assert_eq!(
            error(&c),
            format!("rollups[{longest}]: ad_id {id:?} is not valid")
        );
        // Not UTF-8: the id is checked alone.
        let mut c = cols.clone();
        c.ad_ids[0] = 0xff;
        assert_eq!(error(&c), "rollups[0]: ad_id \"\u{fffd}\" is not valid");
    }

    /// The eight-at-a-time check refuses exactly what the end-by-end one
    /// does: for every count of ends around the chunk edges, a step back
    /// or past the text at each position, and an equal end (allowed).
    #[test]
    fn ends_are_refused_wherever_they_go_wrong() {
        let exact = |ends: &[u32], len: usize| {
            let mut prev = 0;
            ends.iter().all(|&e| {
                let ok = prev <= e && e as usize <= len;
                prev = e;
                ok
            })
        };
        for n in 0..=25u32 {
            let good: Vec<u32> = (1..=n).map(|k| 2 * k).collect();
            let len = 2 * n as usize;
            assert!(ends_fit(&good, len) && check_ends(&good, len, "e").is_ok());
            for at in 0..n as usize {
                for bad in [
                    good[at].saturating_sub(3),
                    good[at] - 2,
                    good[at] + 2,
                    len as u32 + 1,
                ] {
                    let mut ends = good.clone();
                    ends[at] = bad;
                    let want = exact(&ends, len);
                    assert_eq!(ends_fit(&ends, len), want, "{ends:?} in {len}");
                    assert_eq!(check_ends(&ends, len, "e").is_ok(), want, "{ends:?}");
                }
            }
        }
    }

    /// The batch's one pass for control characters lets none through: a
    /// C0 or C1 control in an otherwise ASCII batch is found in its field.
    #[test]
    fn a_control_character_in_an_ascii_batch_is_refused() {
        let usa = Country::new("USA").unwrap();
        let ip = "1.2.3.4".parse().unwrap();
        let controls: [&[u8]; 3] = [b"a\x01c", b"ab\x7f", b"\xc2\x85c"];
        for (k, field) in [(1, "user_id"), (2, "event_id")] {
            for control in controls {
                let mut cols = ClickColumns::default();
                for ad in ["ad1", "ad2"] {
                    let c = ClickRef::new(ad, EventTime(0), "abc", ip, usa, Some("abc"));
                    cols.push(c.unwrap()).unwrap();
                }
                assert!(cols.as_ref().clicks().is_ok());
                // The second click's field, same length.
                let end = cols.text_ends[3 + k] as usize;
                cols.text[end - 3..end].copy_from_slice(control);
                let e = error(&cols);
                assert!(e.starts_with(&format!("clicks[1]: {field} ")), "{e}");
            }
        }
    }

    #[test]
    fn bad_utf8_names_the_click_and_field() {
        let mut cols = two_clicks();
        // "ü" is C3 BC; a lone continuation byte is not UTF-8.
        let at = cols.text.iter().position(|&b| b == 0xc3).unwrap();
        cols.text[at] = b'x';
        assert_eq!(error(&cols), "clicks[1]: user_id is not UTF-8");
    }

    #[test]
    fn an_end_inside_a_character_is_not_utf8() {
        let mut cols = two_clicks();
        // The whole text stays UTF-8, but ad2's end moves into "ü".
        cols.text_ends[3] += 1;
        assert!(core::str::from_utf8(&cols.text).is_ok());
        assert_eq!(error(&cols), "clicks[1]: ad_id is not UTF-8");
    }

    #[test]
    fn the_first_bad_click_is_named() {
        let mut cols = two_clicks();
        let at = cols.text.iter().position(|&b| b == 0xc3).unwrap();
        cols.text[at] = b'x';
        cols.countries[..3].copy_from_slice(b"QQQ");
        assert_eq!(
            error(&cols),
            "clicks[0]: country [81, 81, 81]: not an ISO 3166-1 code"
        );
    }

    #[test]
    fn a_country_that_is_not_text_says_so() {
        let mut cols = two_clicks();
        cols.countries[3..].copy_from_slice(&[0xff, b'S', b'A']);
        assert_eq!(error(&cols), "clicks[1]: country [255, 83, 65]: not ASCII");
        // UTF-8, but not a code.
        cols.countries[3..].copy_from_slice(&[0xc3, 0x9c, b'S']);
        assert_eq!(
            error(&cols),
            "clicks[1]: country [195, 156, 83]: not an ISO 3166-1 code"
        );
        // Lower case is still accepted, as in parsed records.
        let mut cols = two_clicks();
        cols.countries[..3].copy_from_slice(b"fra");
        assert_eq!(cols.as_ref().clicks().unwrap()[0].country.as_str(), "FRA");
    }
}
