//! The worker kilnd reports (ListWorkers, Info) and the cache calls
//! (DiskUsage, Prune), translated to and from the engine.
//!
//! There is one worker: containerd in the configured namespace with the
//! configured snapshotter. Its labels are the ones nerdctl compares with its
//! own containerd (executor, containerd UUID, namespace, snapshotter) to
//! decide whether an image can go straight into the store; see the BuildKit
//! protocol notes, section 11.

use crate::config::GcPolicy;
use crate::state::Daemon;
use crate::tenants::Tenant;
use crate::usagefilter::UsageFilter;
use kiln_engine::cache::RecordInfo;
use kiln_engine::prune::PruneOptions;
use kiln_proto::control::{
    DiskUsageRequest, DiskUsageResponse, InfoResponse, ListWorkersRequest, ListWorkersResponse,
    PruneRequest, UsageRecord,
};
use kiln_proto::llb::Platform;
use kiln_proto::worker::{BuildkitVersion, GcPolicy as GcPolicyRecord, WorkerRecord};
use std::collections::HashMap;
use std::io::Write;
use std::path::Path;
use std::time::Duration;
use tonic::Status;

/// The package BuildkitVersion names.
pub const PACKAGE: &str = "github.com/kiln-build/kiln";
/// The source revision (`buildctl debug info` prints it after the
/// version, as it does buildkitd's commit): `KILN_REVISION` when the build
/// sets it, else the git commit of the version line, else `unknown`.
pub const REVISION: &str = match option_env!("KILN_REVISION") {
    Some(r) => r,
    None => match env!("KILN_GIT_COMMIT").as_bytes() {
        [] => "unknown",
        _ => env!("KILN_GIT_COMMIT"),
    },
};

/// The file under the root that holds the worker id.
pub const WORKER_ID_FILE: &str = "workerid";

/// BuildKit's worker label keys.
pub mod labels {
    pub const EXECUTOR: &str = "org.mobyproject.buildkit.worker.executor";
    pub const SNAPSHOTTER: &str = "org.mobyproject.buildkit.worker.snapshotter";
    pub const NAMESPACE: &str = "org.mobyproject.buildkit.worker.containerd.namespace";
    pub const UUID: &str = "org.mobyproject.buildkit.worker.containerd.uuid";
    pub const HOSTNAME: &str = "org.mobyproject.buildkit.worker.hostname";
    pub const NETWORK: &str = "org.mobyproject.buildkit.worker.network";
    pub const SELINUX: &str = "org.mobyproject.buildkit.worker.selinux.enabled";
}

/// The version every record and Info carry.
pub fn buildkit_version() -> BuildkitVersion {
    BuildkitVersion {
        package: PACKAGE.to_string(),
        version: kiln_engine::VERSION.to_string(),
        revision: REVISION.to_string(),
        dockerfile_version: String::new(),
    }
}

/// The stable worker id in `<root>/workerid`, created (random) on first
/// use. Read once at startup (an unwritable root fails the start) and
/// kept for the daemon's life.
pub fn worker_id(root: &Path) -> std::io::Result<String> {
    let path = root.join(WORKER_ID_FILE);
    match std::fs::read_to_string(&path) {
        Ok(s) if !s.trim().is_empty() => return Ok(s.trim().to_string()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    std::fs::create_dir_all(root)?;
    let id = new_id();
    // Write then rename, so a reader never sees half an id; if two
    // processes race, the last rename wins and both read it back.
    let tmp = root.join(format!(".{WORKER_ID_FILE}.{}", std::process::id()));
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(id.as_bytes())?;
        f.write_all(b"\n")?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, &path)?;
    Ok(std::fs::read_to_string(&path)?.trim().to_string())
}

/// 25 random characters of `[a-z0-9]`, like BuildKit's identity ids.
fn new_id() -> String {
    use rand::Rng;
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::thread_rng();
    (0..25)
        .map(|_| ALPHABET[rng.gen_range(0..ALPHABET.len())] as char)
        .collect()
}

/// The host's platform as ListWorkers reports it: the engine's
/// [`kiln_engine::oci::host_platform`], the one the builds use.
pub fn host_platform() -> Platform {
    let p = kiln_engine::oci::host_platform();
    Platform {
        architecture: p.architecture().to_string(),
        os: p.os().to_string(),
        variant: p.variant().clone().unwrap_or_default(),
        ..Default::default()
    }
}

/// Every platform the worker builds for: the host's, then those QEMU
/// user emulation runs here ([`kiln_engine::oci::runnable_platforms`]),
/// so buildx offers them.
fn platforms() -> Vec<Platform> {
    let mut out = vec![host_platform()];
    for p in kiln_engine::oci::runnable_platforms().into_iter().skip(1) {
        out.push(Platform {
            architecture: p.architecture,
            os: p.os,
            variant: p.variant,
            ..Default::default()
        });
    }
    out
}

fn hostname() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_default()
}

const GB: u64 = 1 << 30;
const MB: u64 = 1 << 20;
const DAY: Duration = Duration::from_secs(86_400);

/// BuildKit's default policies with fixed sizes (BuildKit scales them with
/// the disk): cache mounts unused for two days beyond 512 MB, anything
/// unused for 60 days, then keep the cache within 10 GB reserved / 100 GB
/// used, internal records last.
pub fn default_gc_policies() -> Vec<GcPolicy> {
    let caps = GcPolicy {
        reserved_space: Some(10 * GB),
        max_used_space: Some(100 * GB),
        ..GcPolicy::default()
    };
    vec![
        GcPolicy {
            filters: vec!["type==exec.cachemount".to_string()],
            keep_duration: Some(2 * DAY),
            max_used_space: Some(512 * MB),
            ..GcPolicy::default()
        },
        GcPolicy {
            keep_duration: Some(60 * DAY),
            ..caps.clone()
        },
        caps.clone(),
        GcPolicy { all: true, ..caps },
    ]
}

/// The GC policies ListWorkers reports for a tenant: the configured ones
/// (or the defaults), then its `cache-max` as a policy over every record,
/// the one kilnd applies itself after each of the tenant's builds.
pub fn gc_policies(configured: &[GcPolicy], cache_max: Option<u64>) -> Vec<GcPolicy> {
    let Some(max) = cache_max else {
        return configured.to_vec();
    };
    let mut all = if configured.is_empty() {
        default_gc_policies()
    } else {
        configured.to_vec()
    };
    all.push(GcPolicy {
        all: true,
        max_used_space: Some(max),
        ..GcPolicy::default()
    });
    all
}

fn gc_record(p: &GcPolicy) -> GcPolicyRecord {
    let bytes = |v: Option<u64>| v.map(|b| i64::try_from(b).unwrap_or(i64::MAX)).unwrap_or(0);
    GcPolicyRecord {
        all: p.all,
        keep_duration: p
            .keep_duration
            .map(|d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
            .unwrap_or(0),
        filters: p.filters.clone(),
        reserved_space: bytes(p.reserved_space),
        max_used_space: bytes(p.max_used_space),
        min_free_space: bytes(p.min_free_space),
    }
}

/// The worker record, given what only containerd knows.
pub fn worker_record(
    id: String,
    namespace: &str,
    snapshotter: &str,
    containerd_uuid: &str,
    gc: &[GcPolicy],
    network: &str,
) -> WorkerRecord {
    let labels = HashMap::from([
        (labels::EXECUTOR.to_string(), "containerd".to_string()),
        (labels::SNAPSHOTTER.to_string(), snapshotter.to_string()),
        (labels::NAMESPACE.to_string(), namespace.to_string()),
        (labels::UUID.to_string(), containerd_uuid.to_string()),
        (labels::HOSTNAME.to_string(), hostname()),
        (labels::NETWORK.to_string(), network.to_string()),
        (labels::SELINUX.to_string(), "false".to_string()),
    ]);
    let defaults;
    let gc = if gc.is_empty() {
        defaults = default_gc_policies();
        &defaults[..]
    } else {
        gc
    };
    WorkerRecord {
        id,
        labels,
        platforms: platforms(),
        gc_policy: gc.iter().map(gc_record).collect(),
        buildkit_version: Some(buildkit_version()),
        cdi_devices: Vec::new(),
    }
}

/// A library error as a status: its kind's code, the whole cause chain as
/// message.
fn status_of<E: std::error::Error>(e: &E, kind: kiln_proto::ErrorKind) -> Status {
    Status::new(kind.code(), kiln_snapshot::containerd::error_chain(e))
}

/// ListWorkers: the one worker. Filters are ignored.
pub async fn list_workers(
    d: &Daemon,
    tenant: &Tenant,
    _req: ListWorkersRequest,
) -> Result<ListWorkersResponse, Status> {
    let id = d.worker_id.clone();
    let uuid = tenant
        .ctrd
        .server_uuid()
        .await
        .map_err(|e| status_of(&e, e.kind()))?;
    Ok(ListWorkersResponse {
        record: vec![worker_record(
            id,
            tenant.ctrd.namespace(),
            tenant.ctrd.snapshotter(),
            &uuid,
            &gc_policies(&d.config.gc, tenant.cache_max),
            d.network,
        )],
    })
}

/// Info: the daemon's version.
pub async fn info(_d: &Daemon) -> Result<InfoResponse, Status> {
    Ok(InfoResponse {
        buildkit_version: Some(buildkit_version()),
    })
}

fn timestamp(secs: u64) -> Option<prost_types::Timestamp> {
    (secs > 0).then(|| prost_types::Timestamp {
        seconds: i64::try_from(secs).unwrap_or(i64::MAX),
        nanos: 0,
    })
}

/// One cache record as BuildKit describes it.
pub fn usage_record(r: &RecordInfo) -> UsageRecord {
    UsageRecord {
        id: r.lease.id.clone(),
        mutable: r.mutable(),
        in_use: r.in_use,
        size: i64::try_from(r.size).unwrap_or(i64::MAX),
        created_at: timestamp(r.lease.created_secs),
        last_used_at: timestamp(r.last_used),
        usage_count: i64::try_from(r.usage_count).unwrap_or(i64::MAX),
        description: r.description.clone(),
        record_type: r.record_type.clone(),
        shared: r.shared,
        parents: r.parents.clone(),
        ..Default::default()
    }
}

/// A build context kilnd keeps for the next build of the same client
/// directory (`crate::contexts`), as BuildKit shows the local sources it
/// keeps: a `source.local` record, reclaimable when no build holds it.
pub fn context_record(s: &crate::contexts::Slot) -> UsageRecord {
    let secs = |t: std::time::SystemTime| {
        t.duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
    };
    let name = if s.name.is_empty() {
        "context"
    } else {
        s.name.as_str()
    };
    UsageRecord {
        id: format!("kiln/context/{}", s.id),
        mutable: true,
        in_use: s.in_use,
        size: i64::try_from(s.bytes).unwrap_or(i64::MAX),
        created_at: timestamp(secs(s.created)),
        last_used_at: timestamp(secs(s.used)),
        usage_count: 1,
        description: format!("local source for {name}"),
        record_type: "source.local".to_string(),
        // A `COPY` of the context links its files into the step's layer
        // (a cache record): removing the slot may not free their bytes.
        shared: true,
        ..Default::default()
    }
}

/// The kept contexts of `tenant`, off the async workers (they are read
/// from the file system).
async fn kept_contexts(
    contexts: &std::sync::Arc<crate::contexts::Contexts>,
    tenant: &Tenant,
) -> Vec<crate::contexts::Slot> {
    let (contexts, name) = (contexts.clone(), tenant.name.clone());
    tokio::task::spawn_blocking(move || contexts.list(name.as_deref()))
        .await
        .unwrap_or_default()
}

/// DiskUsage: every cache record (most recently used first), then the
/// build contexts kilnd keeps, narrowed by the request's filters
/// (`crate::usagefilter`) and its `ageLimit`.
pub async fn disk_usage(
    tenant: &Tenant,
    contexts: &std::sync::Arc<crate::contexts::Contexts>,
    req: DiskUsageRequest,
) -> Result<DiskUsageResponse, Status> {
    let filter = UsageFilter::parse(&req.filter)?;
    let records = tenant
        .engine
        .disk_usage()
        .await
        .map_err(|e| status_of(&e, e.kind()))?;
    let kept = kept_contexts(contexts, tenant).await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    Ok(DiskUsageResponse {
        record: records
            .iter()
            .map(usage_record)
            .chain(kept.iter().map(context_record))
            .filter(|r| filter.matches(r) && unused_for(r, req.age_limit, now))
            .collect(),
    })
}

/// BuildKit's `ageLimit` (nanoseconds; 0 is none): only records not used
/// within it, and records never used.
fn unused_for(r: &UsageRecord, age_limit: i64, now: Duration) -> bool {
    let Some(limit) = u64::try_from(age_limit).ok().filter(|&n| n > 0) else {
        return true;
    };
    let Some(used) = &r.last_used_at else {
        return true;
    };
    let cutoff = now.saturating_sub(Duration::from_nanos(limit));
    let used = Duration::new(
        u64::try_from(used.seconds).unwrap_or(0),
        u32::try_from(used.nanos).unwrap_or(0),
    );
    used <= cutoff
}

/// The engine's prune options for a BuildKit PruneRequest.
///
/// `maxUsedSpace` (or, without it, `reservedSpace`, the old keepBytes)
/// bounds what is kept; `minFreeSpace` needs the disk's free space, which
/// kilnd does not measure, so it is refused rather than ignored.
pub fn prune_options(req: &PruneRequest) -> Result<PruneOptions, Status> {
    if req.min_free_space > 0 {
        return Err(Status::invalid_argument(
            "minFreeSpace is not supported by kilnd; use maxUsedSpace or reservedSpace",
        ));
    }
    let positive = |v: i64| u64::try_from(v).ok().filter(|&v| v > 0);
    let keep_storage = match (positive(req.max_used_space), positive(req.reserved_space)) {
        (Some(max), Some(reserved)) => Some(max.max(reserved)),
        (Some(max), None) => Some(max),
        (None, reserved) => reserved,
    };
    // The filters are checked here, before anything is removed; `prune`
    // applies them.
    UsageFilter::parse(&req.filter)?;
    Ok(PruneOptions {
        all: req.all,
        keep_storage,
        keep_duration: positive(req.keep_duration).map(Duration::from_nanos),
        ..Default::default()
    })
}

/// Prune: removes records as asked and returns what went, for Control to
/// stream; then the build contexts kilnd keeps that no build holds and
/// the filters select, unused for `keepDuration` if one is given
/// (`maxUsedSpace`/`reservedSpace` bound the kept contexts on their own:
/// the least recently used go until the rest fit).
pub async fn prune(
    tenant: &Tenant,
    contexts: &std::sync::Arc<crate::contexts::Contexts>,
    req: PruneRequest,
) -> Result<Vec<UsageRecord>, Status> {
    let opts = prune_options(&req)?;
    let filter = UsageFilter::parse(&req.filter)?;
    let mut removed = prune_records(tenant, opts.clone(), &filter).await?;
    let now = std::time::SystemTime::now();
    // Most recently used first: what a size bound keeps.
    let kept = kept_contexts(contexts, tenant).await;
    let mut budget = opts.keep_storage;
    // Each picked slot with the last use it was picked at: one a build
    // used since is not removed.
    let mut doomed: HashMap<String, std::time::SystemTime> = HashMap::new();
    for s in &kept {
        if s.in_use || !filter.matches(&context_record(s)) {
            continue;
        }
        // A last use in the future (the clock moved back) is recent, as
        // BuildKit's `lastUsedAt.After(cutOff)` has it.
        let recent = opts
            .keep_duration
            .is_some_and(|d| now.duration_since(s.used).map_or(true, |age| age <= d));
        let fits = match &mut budget {
            Some(left) if *left >= s.bytes => {
                *left -= s.bytes;
                true
            }
            Some(left) => {
                *left = 0;
                false
            }
            None => false,
        };
        if !recent && !fits {
            doomed.insert(s.id.clone(), s.used);
        }
    }
    if !doomed.is_empty() {
        let (contexts, name) = (contexts.clone(), tenant.name.clone());
        let gone = tokio::task::spawn_blocking(move || {
            contexts.remove(name.as_deref(), |s| doomed.get(&s.id) == Some(&s.used))
        })
        .await
        .unwrap_or_default();
        tracing::info!(slots = gone.len(), "pruned kept build contexts");
        removed.extend(gone.iter().map(context_record));
    }
    Ok(removed)
}

/// [`prune`]'s cache records.
async fn prune_records(
    tenant: &Tenant,
    mut opts: PruneOptions,
    filter: &UsageFilter,
) -> Result<Vec<UsageRecord>, Status> {
    if !filter.is_empty() {
        // Only the records the filters select, as the client sees them.
        let records = tenant
            .engine
            .disk_usage()
            .await
            .map_err(|e| status_of(&e, e.kind()))?;
        opts.ids = Some(
            records
                .iter()
                .filter(|r| filter.matches(&usage_record(r)))
                .map(|r| r.lease.id.clone())
                .collect(),
        );
    }
    let report = tenant
        .engine
        .prune(&opts)
        .await
        .map_err(|e| status_of(&e, e.kind()))?;
    tracing::info!(
        removed = report.removed.len(),
        reclaimed = report.reclaimed,
        "pruned build cache"
    );
    Ok(report.removed.iter().map(usage_record).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_snapshot::containerd::LeaseInfo;

    #[test]
    fn worker_id_is_created_once_and_kept() {
        let dir = tempfile::tempdir().expect("temp dir");
        let root = dir.path().join("root");
        let a = worker_id(&root).expect("created");
        assert_eq!(a.len(), 25);
        assert!(a
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit()));
        let b = worker_id(&root).expect("read back");
        assert_eq!(a, b);
        std::fs::write(root.join(WORKER_ID_FILE), "fixed-id\n").expect("write");
        assert_eq!(worker_id(&root).expect("read"), "fixed-id");
    }

    #[test]
    fn record_carries_the_labels_nerdctl_checks() {
        let r = worker_record("w1".into(), "ns1", "overlayfs", "uuid-1", &[], "cni");
        assert_eq!(r.id, "w1");
        let l = |k: &str| r.labels.get(k).map(String::as_str);
        assert_eq!(l(labels::EXECUTOR), Some("containerd"));
        assert_eq!(l(labels::SNAPSHOTTER), Some("overlayfs"));
        assert_eq!(l(labels::NAMESPACE), Some("ns1"));
        assert_eq!(l(labels::UUID), Some("uuid-1"));
        assert_eq!(l(labels::NETWORK), Some("cni"));
        assert_eq!(l(labels::SELINUX), Some("false"));
        assert!(r.labels.contains_key(labels::HOSTNAME));
        // The host's first, then what emulation runs here, each once.
        assert!(!r.platforms.is_empty());
        assert_eq!(r.platforms[0].os, "linux");
        let names: std::collections::BTreeSet<String> = r
            .platforms
            .iter()
            .map(|p| format!("{}/{}", p.os, p.architecture))
            .collect();
        assert_eq!(names.len(), r.platforms.len());
        #[cfg(target_arch = "x86_64")]
        assert_eq!(r.platforms[0].architecture, "amd64");
        #[cfg(target_arch = "aarch64")]
        assert_eq!(r.platforms[0].architecture, "arm64");
        assert_eq!(r.gc_policy.len(), 4, "BuildKit-like defaults");
        assert_eq!(r.gc_policy[0].keep_duration, 48 * 3600 * 1_000_000_000);
        assert!(r.gc_policy[3].all);
        let v = r.buildkit_version.expect("version");
        assert_eq!(v.version, kiln_engine::VERSION);
        assert_eq!(v.package, PACKAGE);
    }

    #[test]
    fn configured_gc_replaces_the_defaults() {
        let gc = [GcPolicy {
            all: true,
            keep_duration: Some(Duration::from_secs(2)),
            reserved_space: Some(5),
            max_used_space: Some(6),
            min_free_space: Some(7),
            filters: vec!["type==regular".into()],
        }];
        let r = worker_record("w".into(), "n", "s", "u", &gc, "host");
        assert_eq!(
            r.gc_policy,
            vec![GcPolicyRecord {
                all: true,
                keep_duration: 2_000_000_000,
                filters: vec!["type==regular".into()],
                reserved_space: 5,
                max_used_space: 6,
                min_free_space: 7,
            }]
        );
    }

    #[test]
    fn a_tenants_cache_max_is_reported_after_the_other_policies() {
        let cap = GcPolicy {
            all: true,
            max_used_space: Some(42),
            ..GcPolicy::default()
        };
        assert_eq!(gc_policies(&[], None), Vec::<GcPolicy>::new());
        let mut expected = default_gc_policies();
        expected.push(cap.clone());
        assert_eq!(gc_policies(&[], Some(42)), expected);
        let mine = GcPolicy {
            keep_duration: Some(Duration::from_secs(1)),
            ..GcPolicy::default()
        };
        assert_eq!(
            gc_policies(std::slice::from_ref(&mine), Some(42)),
            vec![mine, cap]
        );
    }

    #[test]
    fn prune_requests_map_to_engine_options() {
        let o = prune_options(&PruneRequest {
            filter: vec!["type==exec.cachemount".into()],
            all: true,
            keep_duration: 3_600_000_000_000,
            reserved_space: 100,
            max_used_space: 0,
            min_free_space: 0,
        })
        .expect("valid");
        assert!(o.all);
        assert_eq!(o.keep_duration, Some(Duration::from_secs(3600)));
        assert_eq!(o.keep_storage, Some(100));
        // The filters select records when the prune runs (`prune`).
        assert!(o.types.is_empty() && o.ids.is_none());
        let err = prune_options(&PruneRequest {
            filter: vec!["until=24h".into()],
            ..Default::default()
        })
        .expect_err("an unknown filter key is refused before anything goes");
        assert_eq!(err.code(), tonic::Code::InvalidArgument);

        let o = prune_options(&PruneRequest {
            reserved_space: 100,
            max_used_space: 50,
            ..Default::default()
        })
        .expect("valid");
        assert_eq!(o.keep_storage, Some(100), "never below the reserve");
        let o = prune_options(&PruneRequest::default()).expect("valid");
        assert_eq!(o.keep_storage, None);
        assert_eq!(o.keep_duration, None);
        assert!(o.types.is_empty());

        let err = prune_options(&PruneRequest {
            min_free_space: 1,
            ..Default::default()
        })
        .expect_err("refused");
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
    }

    #[test]
    fn usage_records_describe_cache_records() {
        let r = RecordInfo {
            lease: LeaseInfo {
                id: "kiln/cache/abc".into(),
                labels: HashMap::new(),
                created_secs: 100,
            },
            record_type: "exec.cachemount".into(),
            size: 42,
            description: "cache mount /root/.cache".into(),
            last_used: 200,
            usage_count: 3,
            parents: vec!["kiln/cache/def".into()],
            snapshots: vec!["sha256:abc".into()],
            in_use: false,
            shared: false,
        };
        let u = usage_record(&r);
        assert_eq!(u.id, "kiln/cache/abc");
        assert!(u.mutable);
        assert!(!u.in_use && !u.shared);
        assert_eq!(u.size, 42);
        assert_eq!(u.record_type, "exec.cachemount");
        assert_eq!(u.description, "cache mount /root/.cache");
        assert_eq!(u.created_at.map(|t| t.seconds), Some(100));
        assert_eq!(u.last_used_at.map(|t| t.seconds), Some(200));
        assert_eq!(u.usage_count, 3);
        assert_eq!(u.parents, ["kiln/cache/def"]);
        let regular = usage_record(&RecordInfo {
            record_type: "regular".into(),
            last_used: 0,
            ..r
        });
        assert!(!regular.mutable);
        assert_eq!(regular.last_used_at, None);
    }

    #[test]
    fn the_age_limit_keeps_records_not_used_within_it() {
        let used_at = |secs: i64| UsageRecord {
            last_used_at: Some(prost_types::Timestamp {
                seconds: secs,
                nanos: 0,
            }),
            ..Default::default()
        };
        let now = Duration::from_secs(10_000);
        let hour = 3_600 * 1_000_000_000_i64;
        // No limit: everything.
        assert!(unused_for(&used_at(9_999), 0, now));
        // Used a minute ago: within an hour, left out.
        assert!(!unused_for(&used_at(9_940), hour, now));
        // Used two hours ago, or never: listed.
        assert!(unused_for(&used_at(10_000 - 7_200), hour, now));
        assert!(unused_for(&UsageRecord::default(), hour, now));
    }
}
