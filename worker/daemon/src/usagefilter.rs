//! BuildKit's cache filters for `DiskUsage` and `Prune` (`docker buildx
//! du --filter`, `docker buildx prune --filter`, `buildctl prune
//! --filter`): containerd's filter syntax over BuildKit's usage fields.
//!
//! A request's filters select a record when any one of them does; a filter
//! is terms separated by commas, which must all hold. A term is `field`
//! (present: a non-empty value, or a true flag), `field==value`,
//! `field!=value` or `field~=regexp` (buildx sends `id~=` for `--filter
//! id=`). The fields are BuildKit's (`cache.adaptUsageInfo`): `id`,
//! `parents` (joined by `;`), `description`, `type`, and the flags
//! `inuse`, `mutable`, `immutable`, `shared`, `private`. kiln also takes
//! `field=value` as `==`. Any other field is refused, naming it, rather
//! than matching nothing or everything, so a filter kilnd does not
//! understand never widens a prune.

use kiln_proto::control::UsageRecord;
use tonic::Status;

/// The fields a term may name.
const FIELDS: &str = "id, parents, description, type, inuse, mutable, immutable, shared, private";

/// A request's filters, parsed.
#[derive(Debug, Default)]
pub struct UsageFilter {
    /// Any of these selects; each is terms that must all hold. Empty:
    /// everything.
    any: Vec<Vec<Term>>,
}

#[derive(Debug)]
struct Term {
    field: Field,
    op: Op,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Field {
    Id,
    Parents,
    Description,
    Type,
    InUse,
    Mutable,
    Immutable,
    Shared,
    Private,
}

#[derive(Debug)]
enum Op {
    Present,
    Equal(String),
    NotEqual(String),
    Matches(regex::Regex),
}

impl Field {
    fn parse(name: &str) -> Result<Field, Status> {
        Ok(match name {
            "id" => Field::Id,
            "parents" => Field::Parents,
            "description" => Field::Description,
            "type" => Field::Type,
            "inuse" => Field::InUse,
            "mutable" => Field::Mutable,
            "immutable" => Field::Immutable,
            "shared" => Field::Shared,
            "private" => Field::Private,
            other => {
                return Err(Status::invalid_argument(format!(
                    "unsupported filter key {other:?} (kilnd supports {FIELDS})"
                )))
            }
        })
    }

    /// The field's value in `r` and whether it is present, as BuildKit's
    /// adaptor gives it (flags have no value).
    fn value(self, r: &UsageRecord) -> (String, bool) {
        match self {
            Field::Id => (r.id.clone(), !r.id.is_empty()),
            Field::Parents => (r.parents.join(";"), !r.parents.is_empty()),
            Field::Description => (r.description.clone(), !r.description.is_empty()),
            Field::Type => (r.record_type.clone(), !r.record_type.is_empty()),
            Field::InUse => (String::new(), r.in_use),
            Field::Mutable => (String::new(), r.mutable),
            Field::Immutable => (String::new(), !r.mutable),
            Field::Shared => (String::new(), r.shared),
            Field::Private => (String::new(), !r.shared),
        }
    }
}

impl Term {
    fn parse(term: &str) -> Result<Term, Status> {
        let (name, op) = if let Some((k, v)) = term.split_once("~=") {
            let re = regex::Regex::new(unquote(v))
                .map_err(|e| Status::invalid_argument(format!("invalid filter {term:?}: {e}")))?;
            (k, Op::Matches(re))
        } else if let Some((k, v)) = term.split_once("!=") {
            (k, Op::NotEqual(unquote(v).to_string()))
        } else if let Some((k, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
            (k, Op::Equal(unquote(v).to_string()))
        } else {
            (term, Op::Present)
        };
        Ok(Term {
            field: Field::parse(name.trim())?,
            op,
        })
    }

    /// containerd's rules: `!=` holds for an absent field too.
    fn matches(&self, r: &UsageRecord) -> bool {
        let (value, present) = self.field.value(r);
        match &self.op {
            Op::Present => present,
            Op::Equal(v) => present && value == *v,
            Op::NotEqual(v) => value != *v,
            Op::Matches(re) => re.is_match(&value),
        }
    }
}

/// A value without the double quotes containerd's syntax allows around it.
fn unquote(v: &str) -> &str {
    let v = v.trim();
    v.strip_prefix('"')
        .and_then(|v| v.strip_suffix('"'))
        .unwrap_or(v)
}

impl UsageFilter {
    /// Parses a request's filters; an unknown field or a bad regexp is
    /// `InvalidArgument`, naming it.
    pub fn parse(filters: &[String]) -> Result<UsageFilter, Status> {
        let mut any = Vec::new();
        for f in filters {
            let terms: Vec<Term> = f
                .split(',')
                .map(str::trim)
                .filter(|t| !t.is_empty())
                .map(Term::parse)
                .collect::<Result<_, _>>()?;
            if !terms.is_empty() {
                any.push(terms);
            }
        }
        Ok(UsageFilter { any })
    }

    /// Whether no filter was given (everything is selected).
    pub fn is_empty(&self) -> bool {
        self.any.is_empty()
    }

    /// Whether `r` is selected.
    pub fn matches(&self, r: &UsageRecord) -> bool {
        self.is_empty() || self.any.iter().any(|f| f.iter().all(|t| t.matches(r)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: &str, t: &str, description: &str, in_use: bool) -> UsageRecord {
        UsageRecord {
            id: id.into(),
            record_type: t.into(),
            mutable: t == "exec.cachemount",
            in_use,
            description: description.into(),
            parents: if id == "kiln/cache/b" {
                vec!["kiln/cache/a".into()]
            } else {
                Vec::new()
            },
            ..Default::default()
        }
    }

    fn selected(filters: &[&str]) -> Vec<String> {
        let f = UsageFilter::parse(&filters.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .expect("parses");
        [
            record("kiln/cache/a", "regular", "[1/2] COPY a /a", false),
            record("kiln/cache/b", "regular", "[2/2] RUN make", true),
            record(
                "kiln/cache/m",
                "exec.cachemount",
                "cache mount /root/.cache",
                false,
            ),
        ]
        .into_iter()
        .filter(|r| f.matches(r))
        .map(|r| r.id)
        .collect()
    }

    #[test]
    fn terms_hold_together_and_filters_select_alone() {
        let all = ["kiln/cache/a", "kiln/cache/b", "kiln/cache/m"];
        assert_eq!(selected(&[]), all);
        assert_eq!(
            selected(&["type==regular"]),
            ["kiln/cache/a", "kiln/cache/b"]
        );
        assert_eq!(selected(&["type=exec.cachemount"]), ["kiln/cache/m"]);
        // As buildx sends them: `id~=`, `description~=`, flags.
        assert_eq!(selected(&["id~=cache/b"]), ["kiln/cache/b"]);
        assert_eq!(
            selected(&["description~=COPY|cache mount"]),
            ["kiln/cache/a", "kiln/cache/m"]
        );
        assert_eq!(selected(&["inuse"]), ["kiln/cache/b"]);
        assert_eq!(selected(&["mutable"]), ["kiln/cache/m"]);
        assert_eq!(
            selected(&["immutable,private"]),
            ["kiln/cache/a", "kiln/cache/b"]
        );
        assert!(selected(&["shared"]).is_empty());
        assert_eq!(selected(&["parents==kiln/cache/a"]), ["kiln/cache/b"]);
        assert_eq!(selected(&["type!=regular"]), ["kiln/cache/m"]);
        // Commas: all terms; several filters: any.
        assert!(selected(&["type==regular,type==exec.cachemount"]).is_empty());
        assert_eq!(
            selected(&["type==exec.cachemount", "description==\"[1/2] COPY a /a\""]),
            ["kiln/cache/a", "kiln/cache/m"]
        );
    }

    #[test]
    fn an_unknown_field_or_a_bad_regexp_is_refused_by_name() {
        let err = UsageFilter::parse(&["until=24h".into()]).expect_err("unsupported");
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        assert_eq!(
            err.message(),
            format!("unsupported filter key \"until\" (kilnd supports {FIELDS})")
        );
        assert!(UsageFilter::parse(&["regular".into()]).is_err());
        let err = UsageFilter::parse(&["description~=(".into()]).expect_err("bad regexp");
        assert!(
            err.message()
                .starts_with("invalid filter \"description~=(\""),
            "{}",
            err.message()
        );
    }
}
