//! The domain types of a click.

use crate::validate::Bytes;
use alloc::string::String;
use alloc::sync::Arc;
use core::fmt;
use serde::{Deserialize, Serialize};

pub use core::net::IpAddr;

/// Milliseconds since the Unix epoch, UTC (negative before 1970).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct EventTime(pub i64);

/// A source partition (a Kafka partition, a log file, ...).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Partition(pub u32);

/// A record's position in its partition.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Offset(pub i64);

impl Offset {
    /// The offset after this one.
    pub fn next(self) -> Offset {
        Offset(self.0.saturating_add(1))
    }
}

impl fmt::Display for Partition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl fmt::Display for Offset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

macro_rules! string_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        ///
        /// Shared and immutable: cloning copies a pointer, not the text.
        #[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub(crate) Arc<str>);

        impl $name {
            /// The identifier as text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl core::borrow::Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

string_id!(
    /// An ad's identifier: 1 to 64 bytes of `[A-Za-z0-9._:-]`.
    AdId
);
string_id!(
    /// A user's identifier: 1 to 128 bytes, no control characters.
    UserId
);
string_id!(
    /// A producer-assigned unique click identifier: 1 to 128 bytes, no control characters.
    EventId
);

impl AdId {
    /// Checks and wraps an ad id.
    pub fn new(s: &str) -> Result<AdId, crate::InvalidReason> {
        crate::validate::ad_id(s).map(|()| AdId(Arc::from(s)))
    }
}

impl UserId {
    /// Checks and wraps a user id.
    pub fn new(s: &str) -> Result<UserId, crate::InvalidReason> {
        crate::validate::user_id(s, Bytes::Unchecked).map(|()| UserId(Arc::from(s)))
    }
}

impl EventId {
    /// Checks and wraps an event id.
    pub fn new(s: &str) -> Result<EventId, crate::InvalidReason> {
        crate::validate::event_id(s, Bytes::Unchecked).map(|()| EventId(Arc::from(s)))
    }
}

/// An ISO 3166-1 country, held as its upper-case alpha-3 code (`USA`).
/// Alpha-2 codes (`US`) and lower case are accepted on input.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "&str", into = "String")]
pub struct Country([u8; 3]);

impl Country {
    /// `ZZZ`, the user-assigned code for an unknown or unspecified country
    /// (as in ICAO 9303): what a click without a country (a Yahoo Streaming
    /// Benchmark event) is counted under. Accepted on input too.
    pub const UNSPECIFIED: Country = Country(*b"ZZZ");

    /// Looks up an alpha-3 or alpha-2 code, case-insensitively (and `ZZZ`).
    pub fn new(code: &str) -> Result<Country, crate::InvalidReason> {
        crate::validate::country(code)
    }

    pub(crate) fn from_alpha3(code: [u8; 3]) -> Country {
        Country(code)
    }

    /// The alpha-3 code.
    pub fn as_str(&self) -> &str {
        // Only ever built from the ASCII table.
        core::str::from_utf8(&self.0).unwrap_or("???")
    }
}

impl fmt::Debug for Country {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Display for Country {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl TryFrom<&str> for Country {
    type Error = crate::InvalidReason;
    fn try_from(s: &str) -> Result<Country, Self::Error> {
        Country::new(s)
    }
}

impl From<Country> for String {
    fn from(c: Country) -> String {
        String::from(c.as_str())
    }
}

/// A valid ad click.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Click {
    /// The clicked ad.
    pub ad_id: AdId,
    /// When the click happened (event time).
    pub timestamp: EventTime,
    /// Who clicked.
    pub user_id: UserId,
    /// From where; IPv4-mapped IPv6 addresses are stored as IPv4.
    pub ip: IpAddr,
    /// The user's country.
    pub country: Country,
    /// The producer's unique id for this click, when it has one.
    pub event_id: Option<EventId>,
}

impl Click {
    /// The click with its text fields borrowed.
    pub fn as_click_ref(&self) -> ClickRef<'_> {
        ClickRef {
            ad_id: self.ad_id.as_str(),
            timestamp: self.timestamp,
            user_id: self.user_id.as_str(),
            ip: self.ip,
            country: self.country,
            event_id: self.event_id.as_ref().map(EventId::as_str),
        }
    }
}

/// A valid click whose text fields are borrowed from the record it was
/// parsed from (or from a [`Click`]): the engine's hot path allocates only
/// for ads it has not seen yet.
///
/// ```
/// use adtally_core::{ClickRef, Country, EventTime, InvalidReason};
/// let ip = "1.2.3.4".parse().unwrap();
/// let usa = Country::new("USA").unwrap();
/// let c = ClickRef::new("ad1", EventTime(0), "u1", ip, usa, None).unwrap();
/// assert_eq!(c.to_click().ad_id.as_str(), "ad1");
/// assert_eq!(
///     ClickRef::new("ad 1", EventTime(0), "u1", ip, usa, None),
///     Err(InvalidReason::BadAdId)
/// );
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClickRef<'a> {
    pub(crate) ad_id: &'a str,
    pub(crate) timestamp: EventTime,
    pub(crate) user_id: &'a str,
    pub(crate) ip: IpAddr,
    pub(crate) country: Country,
    pub(crate) event_id: Option<&'a str>,
}

/// `ip.to_canonical()` (an IPv4-mapped IPv6 address as IPv4), the address
/// tested as one 128-bit number: `to_canonical` tests its bytes, which the
/// compiler then keeps apart, and WebAssembly stored a click's address one
/// byte at a time (about 80 instructions per click natively, 70 in
/// WebAssembly, on the benchmark's columns).
pub(crate) fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) if v6.to_bits() >> 32 == 0xffff => {
            IpAddr::V4(core::net::Ipv4Addr::from_bits(v6.to_bits() as u32))
        }
        _ => ip,
    }
}

impl<'a> ClickRef<'a> {
    /// Checks every field as the parser does (an empty `event_id` means none).
    pub fn new(
        ad_id: &'a str,
        timestamp: EventTime,
        user_id: &'a str,
        ip: IpAddr,
        country: Country,
        event_id: Option<&'a str>,
    ) -> Result<ClickRef<'a>, crate::InvalidReason> {
        let event_id = event_id.filter(|e| !e.is_empty());
        ClickRef::check(ad_id, timestamp, user_id, event_id, Bytes::Unchecked)?;
        Ok(ClickRef {
            ad_id,
            timestamp,
            user_id,
            ip: canonical_ip(ip),
            country,
            event_id,
        })
    }

    /// The checks of [`ClickRef::new`] on the text fields and the time
    /// (`event_id` already `None` when empty), without building a click;
    /// `bytes` is what is known of the text fields' bytes.
    pub(crate) fn check(
        ad_id: &str,
        timestamp: EventTime,
        user_id: &str,
        event_id: Option<&str>,
        bytes: Bytes,
    ) -> Result<(), crate::InvalidReason> {
        crate::validate::ad_id(ad_id)?;
        crate::validate::timestamp_range(timestamp.0)?;
        crate::validate::user_id(user_id, bytes)?;
        if let Some(e) = event_id {
            crate::validate::event_id(e, bytes)?;
        }
        Ok(())
    }

    /// The clicked ad.
    pub fn ad_id(&self) -> &'a str {
        self.ad_id
    }

    /// When the click happened.
    pub fn timestamp(&self) -> EventTime {
        self.timestamp
    }

    /// Who clicked.
    pub fn user_id(&self) -> &'a str {
        self.user_id
    }

    /// From where (IPv4-mapped IPv6 addresses as IPv4).
    pub fn ip(&self) -> IpAddr {
        self.ip
    }

    /// The user's country.
    pub fn country(&self) -> Country {
        self.country
    }

    /// The producer's click id, if any.
    pub fn event_id(&self) -> Option<&'a str> {
        self.event_id
    }

    /// An owned copy.
    pub fn to_click(&self) -> Click {
        Click {
            ad_id: AdId(Arc::from(self.ad_id)),
            timestamp: self.timestamp,
            user_id: UserId(Arc::from(self.user_id)),
            ip: self.ip,
            country: self.country,
            event_id: self.event_id.map(|e| EventId(Arc::from(e))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_ip_is_to_canonical() {
        for ip in [
            "::ffff:1.2.3.4",
            "::ffff:0.0.0.0",
            "::ffff:255.255.255.255",
            "::1.2.3.4",
            "::fffe:1.2.3.4",
            "1::ffff:1.2.3.4",
            "::",
            "::1",
            "2001:db8::1",
        ] {
            let v6: core::net::Ipv6Addr = ip.parse().unwrap();
            let want = IpAddr::V6(v6).to_canonical();
            assert_eq!(canonical_ip(IpAddr::V6(v6)), want, "{ip}");
        }
    }
}
