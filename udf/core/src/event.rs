//! The domain types of a click.

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
        crate::validate::user_id(s).map(|()| UserId(Arc::from(s)))
    }
}

impl EventId {
    /// Checks and wraps an event id.
    pub fn new(s: &str) -> Result<EventId, crate::InvalidReason> {
        crate::validate::event_id(s).map(|()| EventId(Arc::from(s)))
    }
}

/// An ISO 3166-1 country, held as its upper-case alpha-3 code (`USA`).
/// Alpha-2 codes (`US`) and lower case are accepted on input.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "&str", into = "String")]
pub struct Country([u8; 3]);

impl Country {
    /// Looks up an alpha-3 or alpha-2 code, case-insensitively.
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
