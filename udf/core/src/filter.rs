//! Filters: the star-schema dimensions a click is counted under.

use crate::{Click, ClickRef, ConfigError, Country, EventTime, IpAddr, UserId};
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use serde::{Deserialize, Serialize};

/// A filter's identifier. Filter 0 counts every valid click.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct FilterId(pub u32);

impl FilterId {
    /// The filter every valid click matches.
    pub const ALL: FilterId = FilterId(0);
}

/// A filter as configured: every non-empty dimension must match (AND); a
/// dimension matches when the click's value is one of its entries (OR).
///
/// ```json
/// {"id": 1, "name": "US only", "country": ["USA"]}
/// {"id": 2, "ip": ["10.0.0.0/8", "192.168.1.7"], "user_id": ["user1"]}
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilterSpec {
    /// 1 or more; unique.
    pub id: u32,
    /// Free text for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// ISO 3166-1 alpha-2 or alpha-3 codes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub country: Vec<String>,
    /// Addresses (`1.2.3.4`) or networks in CIDR notation (`10.0.0.0/8`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ip: Vec<String>,
    /// Exact user ids.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub user_id: Vec<String>,
}

/// An IP network: an address and a prefix length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct IpNet {
    addr: IpAddr,
    prefix: u8,
}

impl IpNet {
    fn parse(s: &str) -> Option<IpNet> {
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a.parse::<IpAddr>().ok()?, Some(p.parse::<u8>().ok()?)),
            None => (s.parse::<IpAddr>().ok()?, None),
        };
        let addr = crate::event::canonical_ip(addr);
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = prefix.unwrap_or(max);
        (prefix <= max).then_some(IpNet { addr, prefix })
    }

    fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX.checked_shl(32 - self.prefix as u32).unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX.checked_shl(128 - self.prefix as u32).unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

#[derive(Clone, Debug)]
struct Filter {
    id: FilterId,
    countries: Vec<Country>,
    nets: Vec<IpNet>,
    users: Vec<UserId>,
}

impl Filter {
    fn matches(&self, c: &ClickRef<'_>) -> bool {
        (self.countries.is_empty() || self.countries.contains(&c.country))
            && (self.nets.is_empty() || self.nets.iter().any(|n| n.contains(c.ip)))
            && (self.users.is_empty() || self.users.iter().any(|u| u.as_str() == c.user_id))
    }
}

/// The configured filters, checked.
#[derive(Clone, Debug, Default)]
pub struct FilterSet {
    filters: Vec<Filter>,
}

impl FilterSet {
    /// Checks the specs: ids unique and non-zero, at least one dimension,
    /// every value well-formed.
    pub fn new(specs: &[FilterSpec]) -> Result<FilterSet, ConfigError> {
        let mut filters: Vec<Filter> = Vec::with_capacity(specs.len());
        for spec in specs {
            let field = |what: &str| format!("filters[id={}].{what}", spec.id);
            if spec.id == 0 {
                return Err(ConfigError::new(
                    "filters[].id",
                    "0",
                    "filter 0 is built in (all clicks); use 1 or more",
                ));
            }
            if filters.iter().any(|f| f.id.0 == spec.id) {
                return Err(ConfigError::new(field("id"), spec.id, "appears twice"));
            }
            if spec.country.is_empty() && spec.ip.is_empty() && spec.user_id.is_empty() {
                return Err(ConfigError::new(
                    field("*"),
                    "{}",
                    "a filter needs at least one of country, ip, user_id",
                ));
            }
            let countries = spec
                .country
                .iter()
                .map(|c| {
                    Country::new(c).map_err(|_| {
                        ConfigError::new(field("country"), c, "not an ISO 3166-1 code")
                    })
                })
                .collect::<Result<_, _>>()?;
            let nets = spec
                .ip
                .iter()
                .map(|s| {
                    IpNet::parse(s).ok_or_else(|| {
                        ConfigError::new(field("ip"), s, "not an IP address or CIDR network")
                    })
                })
                .collect::<Result<_, _>>()?;
            let users = spec
                .user_id
                .iter()
                .map(|u| UserId::new(u).map_err(|r| ConfigError::new(field("user_id"), u, r)))
                .collect::<Result<_, _>>()?;
            filters.push(Filter {
                id: FilterId(spec.id),
                countries,
                nets,
                users,
            });
        }
        filters.sort_by_key(|f| f.id);
        Ok(FilterSet { filters })
    }

    /// Appends the ids of the filters `click` matches, filter 0 first, in
    /// ascending order.
    pub fn matching(&self, click: &Click, out: &mut Vec<FilterId>) {
        self.matching_ref(&click.as_click_ref(), out)
    }

    /// [`FilterSet::matching`] for a borrowed click.
    pub fn matching_ref(&self, click: &ClickRef<'_>, out: &mut Vec<FilterId>) {
        out.clear();
        out.push(FilterId::ALL);
        out.extend(
            self.filters
                .iter()
                .filter(|f| f.matches(click))
                .map(|f| f.id),
        );
    }

    /// The filters of `json`: a JSON list of filter specs, or a whole
    /// configuration object (whose other fields are checked too).
    ///
    /// ```
    /// use adtally_core::FilterSet;
    /// assert_eq!(FilterSet::from_json(r#"[{"id":1,"country":["USA"]}]"#).unwrap().ids().count(), 1);
    /// assert_eq!(FilterSet::from_json(r#"{"window_ms":1000}"#).unwrap().ids().count(), 0);
    /// assert!(FilterSet::from_json(r#"[{"id":0}]"#).is_err());
    /// ```
    pub fn from_json(json: &str) -> Result<FilterSet, ConfigError> {
        // `Config::from_json` checks every field; `check` gives the set.
        let config = if json.trim_start().starts_with('[') {
            crate::Config::from_json(&format!("{{\"filters\":{json}}}"))
        } else {
            crate::Config::from_json(json)
        };
        config?.check()
    }

    /// The ids of the filters a click with these dimensions matches, filter
    /// 0 first: what [`FilterSet::matching`] says of such a click.
    /// Dimensions no valid click has (a country that is not an ISO 3166-1
    /// alpha-3 code, text that is not an IP address, a user id the parser
    /// refuses) match no filter at all, not even filter 0, just as the
    /// record they came from counts in none: `[]`, never an error, because
    /// SQL evaluates the function on the rows of invalid records too.
    ///
    /// ```
    /// use adtally_core::{Config, FilterId};
    /// let set = Config::from_json(r#"{"filters":[{"id":1,"country":["USA"]}]}"#).unwrap().check().unwrap();
    /// assert_eq!(set.matching_dimensions("USA", "1.2.3.4", "u1"), [FilterId(0), FilterId(1)]);
    /// assert_eq!(set.matching_dimensions("FRA", "::ffff:1.2.3.4", "u1"), [FilterId(0)]);
    /// assert_eq!(set.matching_dimensions("XX", "1.2.3.4", "u1"), []);
    /// assert_eq!(set.matching_dimensions("USA", "", ""), []);
    /// ```
    pub fn matching_dimensions(&self, country: &str, ip: &str, user_id: &str) -> Vec<FilterId> {
        let mut out = Vec::new();
        let (Ok(country), Ok(ip)) = (Country::new(country), ip.parse::<IpAddr>()) else {
            return out;
        };
        if let Ok(click) = ClickRef::new("x", EventTime(0), user_id, ip, country, None) {
            self.matching_ref(&click, &mut out);
        }
        out
    }

    /// Whether any filter besides filter 0 is configured.
    pub(crate) fn has_configured(&self) -> bool {
        !self.filters.is_empty()
    }

    /// How many filters a click can count in, filter 0 included.
    pub(crate) fn len_all(&self) -> usize {
        1 + self.filters.len()
    }

    /// The configured filter ids (without 0).
    pub fn ids(&self) -> impl Iterator<Item = FilterId> + '_ {
        self.filters.iter().map(|f| f.id)
    }

    /// Every filter a click can count in: [`FilterId::ALL`], then the
    /// configured ids, ascending.
    pub fn all_ids(&self) -> impl Iterator<Item = FilterId> + '_ {
        core::iter::once(FilterId::ALL).chain(self.ids())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidr() {
        let n = IpNet::parse("10.0.0.0/8").unwrap();
        assert!(n.contains("10.255.0.1".parse().unwrap()));
        assert!(!n.contains("11.0.0.1".parse().unwrap()));
        let all = IpNet::parse("::/0").unwrap();
        assert!(all.contains("2001:db8::1".parse().unwrap()));
        assert!(IpNet::parse("10.0.0.0/33").is_none());
        let v6 = IpNet::parse("2001:db8::/32").unwrap();
        assert!(v6.contains("2001:db8:ffff::1".parse().unwrap()));
        assert!(!v6.contains("2001:db9::1".parse().unwrap()));
    }
}
