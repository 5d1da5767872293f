//! Requests as text, checked into [`CountRequest`] and [`PopularRequest`].

use super::{BadParameter, Catalog, CountRequest, Minutes, PopularRequest};
use adtally_core::{AdId, EventTime, FilterId, FilterSet, FilterSpec, WindowSize, WindowStart};
use serde::Deserialize;
use std::time::UNIX_EPOCH;

/// API 1's parameters as given (a query string, or `adtally query count`'s flags).
#[derive(Clone, Debug, Default, Deserialize, utoipa::IntoParams, clap::Args)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct CountParams {
    /// The first minute counted: `yyyyMMddHHmm` (UTC, as in the design's
    /// tables) or RFC 3339 (`2026-12-01T10:00:00Z`). Default: `to` minus
    /// one minute.
    #[arg(long)]
    pub from: Option<String>,
    /// The first minute not counted, in the same forms. Default: the
    /// current minute (the range is then the last whole minute).
    #[arg(long)]
    pub to: Option<String>,
    /// A configured filter id; 0 (the default) counts every click.
    #[arg(long)]
    pub filter: Option<String>,
    /// Ad-hoc: only clicks from these countries (ISO 3166-1 alpha-2 or
    /// alpha-3, comma-separated); answered from the raw events.
    #[arg(long)]
    pub country: Option<String>,
    /// Ad-hoc: only clicks from these addresses or CIDR networks
    /// (comma-separated); answered from the raw events.
    #[arg(long)]
    pub ip: Option<String>,
    /// Ad-hoc: only clicks of these user ids (comma-separated); answered
    /// from the raw events.
    #[arg(long)]
    pub user_id: Option<String>,
}

/// The chart's parameters as given (`/v1/ads/{ad_id}/minutes`): API 1's
/// range and configured filter.
#[derive(Clone, Debug, Default, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct MinutesParams {
    /// The first minute, as in API 1 (default: `to` minus one minute).
    pub from: Option<String>,
    /// The first minute not shown (default: the current minute).
    pub to: Option<String>,
    /// A configured filter id (default 0).
    pub filter: Option<String>,
}

impl MinutesParams {
    /// API 1's parameters without ad-hoc dimensions.
    pub fn count_params(&self) -> CountParams {
        CountParams {
            from: self.from.clone(),
            to: self.to.clone(),
            filter: self.filter.clone(),
            ..CountParams::default()
        }
    }
}

/// `/v1/rankings`' parameters as given.
#[derive(Clone, Debug, Default, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct RankingParams {
    /// A window the core precomputes, in minutes (default: the first).
    pub window: Option<String>,
    /// A configured filter id (default 0).
    pub filter: Option<String>,
}

impl RankingParams {
    /// Checks every parameter: the window must be one the core ranks.
    pub fn check(&self, catalog: &Catalog) -> Result<PopularRequest, BadParameter> {
        let windows = &catalog.config().top_n_windows;
        let first = windows.first().copied().unwrap_or(1);
        let window = number(
            "window",
            self.window.as_deref(),
            first,
            1,
            catalog.limits().max_window,
        )?;
        if !windows.contains(&window) {
            return Err(BadParameter::new(
                "window",
                self.window.as_deref().unwrap_or(""),
                format!("the core ranks only windows {windows:?}; /v1/ads/popular_ads ranks any"),
            ));
        }
        Ok(PopularRequest {
            count: catalog.config().top_n,
            window,
            filter: filter(self.filter.as_deref(), catalog)?,
        })
    }
}

/// API 2's parameters as given.
#[derive(Clone, Debug, Default, Deserialize, utoipa::IntoParams, clap::Args)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct PopularParams {
    /// How many ads (default 10).
    #[arg(long)]
    pub count: Option<String>,
    /// The window M, in minutes: the last M final minutes (default 1).
    /// Sizes the core precomputes are read from its rankings, any other
    /// is ranked from the rollups.
    #[arg(long)]
    pub window: Option<String>,
    /// A configured filter id (default 0).
    #[arg(long)]
    pub filter: Option<String>,
}

impl CountParams {
    /// Checks every parameter; `now_ms` is the clock the defaults use.
    pub fn check(
        &self,
        ad_id: &str,
        catalog: &Catalog,
        now_ms: i64,
    ) -> Result<CountRequest, BadParameter> {
        let ad = AdId::new(ad_id).map_err(|e| BadParameter::new("ad_id", ad_id, e))?;
        let size = catalog.window_size();
        let to = match &self.to {
            Some(t) => minute("to", t, size)?,
            None => size.window_of(EventTime(now_ms)),
        };
        let from = match &self.from {
            Some(f) => minute("from", f, size)?,
            None => WindowStart(to.0.saturating_sub(size.ms())),
        };
        if from >= to {
            return Err(BadParameter::new(
                "from",
                self.from.as_deref().unwrap_or(""),
                format!(
                    "must be before to ({}): the range is [from, to)",
                    super::minute_text(to)
                ),
            ));
        }
        let windows = (to.0 - from.0) / size.ms();
        let max = catalog.limits().max_range;
        if windows > i64::from(max) {
            // The bound given, `to` when both were.
            let (name, value) = match (&self.to, &self.from) {
                (Some(t), _) => ("to", t.as_str()),
                (None, Some(f)) => ("from", f.as_str()),
                (None, None) => ("to", ""),
            };
            return Err(BadParameter::new(
                name,
                value,
                format!(
                    "the range holds {windows} minutes, more than the {max} this server allows"
                ),
            ));
        }
        let filter = filter(self.filter.as_deref(), catalog)?;
        let list = |v: &Option<String>| -> Vec<String> {
            v.iter()
                .flat_map(|s| s.split(','))
                .map(|s| s.trim().to_owned())
                .collect()
        };
        let spec = FilterSpec {
            id: 1,
            name: None,
            country: list(&self.country),
            ip: list(&self.ip),
            user_id: list(&self.user_id),
        };
        let ad_hoc = if spec.country.is_empty() && spec.ip.is_empty() && spec.user_id.is_empty() {
            None
        } else {
            // The core checks the values as it checks a configured filter's.
            FilterSet::new(std::slice::from_ref(&spec)).map_err(|e| {
                let parameter = e.field.rsplit('.').next().unwrap_or("filter").to_owned();
                BadParameter::new(&parameter, &e.value, e.message)
            })?;
            Some(spec)
        };
        Ok(CountRequest {
            ad,
            minutes: Minutes { from, to },
            filter,
            ad_hoc,
        })
    }
}

impl PopularParams {
    /// Checks every parameter.
    pub fn check(&self, catalog: &Catalog) -> Result<PopularRequest, BadParameter> {
        let limits = catalog.limits();
        let count = number("count", self.count.as_deref(), 10, 1, limits.max_count)?;
        let window = number("window", self.window.as_deref(), 1, 1, limits.max_window)?;
        let filter = filter(self.filter.as_deref(), catalog)?;
        Ok(PopularRequest {
            count,
            window,
            filter,
        })
    }
}

fn number(
    name: &str,
    given: Option<&str>,
    default: u32,
    lo: u32,
    hi: u32,
) -> Result<u32, BadParameter> {
    let Some(s) = given else {
        return Ok(default);
    };
    let n: u64 = s
        .trim()
        .parse()
        .map_err(|_| BadParameter::new(name, s, "not a whole number"))?;
    if !(u64::from(lo)..=u64::from(hi)).contains(&n) {
        return Err(BadParameter::new(
            name,
            s,
            format!("must be between {lo} and {hi}"),
        ));
    }
    Ok(n as u32)
}

fn filter(given: Option<&str>, catalog: &Catalog) -> Result<FilterId, BadParameter> {
    let Some(s) = given else {
        return Ok(FilterId::ALL);
    };
    let id: u32 = s
        .trim()
        .parse()
        .map_err(|_| BadParameter::new("filter", s, "not a filter id (a whole number)"))?;
    let known = catalog.filter_ids();
    if !known.contains(&id) {
        return Err(BadParameter::new(
            "filter",
            s,
            format!("no such filter; configured: {known:?}"),
        ));
    }
    Ok(FilterId(id))
}

/// A minute: `yyyyMMddHHmm` (UTC) or RFC 3339, at the start of a window.
fn minute(name: &str, s: &str, size: WindowSize) -> Result<WindowStart, BadParameter> {
    let t = s.trim();
    let rfc3339 = if t.len() == 12 && t.bytes().all(|b| b.is_ascii_digit()) {
        format!(
            "{}-{}-{}T{}:{}:00Z",
            &t[0..4],
            &t[4..6],
            &t[6..8],
            &t[8..10],
            &t[10..12]
        )
    } else {
        t.to_owned()
    };
    let at = humantime::parse_rfc3339_weak(&rfc3339).map_err(|_| {
        BadParameter::new(
            name,
            s,
            "not a minute: give yyyyMMddHHmm (UTC, 202612011000) or RFC 3339 (2026-12-01T10:00:00Z)",
        )
    })?;
    let ms = at
        .duration_since(UNIX_EPOCH)
        .ok()
        .and_then(|d| i64::try_from(d.as_millis()).ok())
        .ok_or_else(|| BadParameter::new(name, s, "before 1970"))?;
    let start = size.window_of(EventTime(ms));
    if start.0 != ms {
        return Err(BadParameter::new(
            name,
            s,
            format!(
                "not the start of a minute (that minute starts at {})",
                super::minute_text(start)
            ),
        ));
    }
    Ok(start)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::query::Limits;
    use adtally_core::Config;

    fn catalog() -> Catalog {
        let config = Config::from_json(r#"{"filters":[{"id":3,"country":["USA"]}]}"#).unwrap();
        Catalog::new(config, Limits::default()).unwrap()
    }

    fn count(q: &[(&str, &str)]) -> Result<CountRequest, BadParameter> {
        let mut p = CountParams::default();
        for (k, v) in q {
            let v = Some(v.to_string());
            match *k {
                "from" => p.from = v,
                "to" => p.to = v,
                "filter" => p.filter = v,
                "country" => p.country = v,
                "ip" => p.ip = v,
                "user_id" => p.user_id = v,
                _ => unreachable!(),
            }
        }
        p.check("ad1", &catalog(), 1_764_583_230_000)
    }

    #[test]
    fn minutes_in_both_forms_and_defaults() {
        let r = count(&[("from", "202612011000"), ("to", "2026-12-01T10:05:00Z")]).unwrap();
        assert_eq!(r.minutes.from, WindowStart(1_796_119_200_000));
        assert_eq!(r.minutes.to.0 - r.minutes.from.0, 300_000);
        let d = count(&[]).unwrap();
        assert_eq!(d.minutes.to, WindowStart(1_764_583_200_000));
        assert_eq!(d.minutes.from, WindowStart(1_764_583_140_000));
    }

    #[test]
    fn each_bad_parameter_is_named() {
        let bad = |q: &[(&str, &str)]| count(q).unwrap_err().parameter;
        assert_eq!(bad(&[("from", "yesterday")]), "from");
        assert_eq!(
            bad(&[("from", "202612011000"), ("to", "202612010900")]),
            "from"
        );
        assert_eq!(
            bad(&[("to", "202612011000"), ("from", "202501011000")]),
            "to"
        );
        assert_eq!(bad(&[("from", "2026-12-01T10:00:30Z")]), "from");
        assert_eq!(bad(&[("filter", "9")]), "filter");
        assert_eq!(bad(&[("filter", "x")]), "filter");
        assert_eq!(bad(&[("ip", "10.0.0.0/33")]), "ip");
        assert_eq!(bad(&[("country", "Narnia")]), "country");
        let p = CountParams::default();
        assert_eq!(p.check("", &catalog(), 0).unwrap_err().parameter, "ad_id");
        let pop = |c: &str, w: &str| {
            PopularParams {
                count: Some(c.into()),
                window: Some(w.into()),
                filter: None,
            }
            .check(&catalog())
            .map_err(|e| e.parameter)
        };
        assert_eq!(pop("0", "1").unwrap_err(), "count");
        assert_eq!(pop("10", "1441").unwrap_err(), "window");
        assert_eq!(pop("ten", "1").unwrap_err(), "count");
        assert!(pop("10", "60").is_ok());
    }

    #[test]
    fn ad_hoc_dimensions_are_checked_by_the_core() {
        let r = count(&[("country", "US,FRA"), ("ip", "10.0.0.0/8")]).unwrap();
        let spec = r.ad_hoc.unwrap();
        assert_eq!(spec.country, ["US", "FRA"]);
        assert_eq!(spec.ip, ["10.0.0.0/8"]);
        assert_eq!(count(&[("filter", "3")]).unwrap().filter, FilterId(3));
    }
}
