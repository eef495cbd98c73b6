//! Which pod takes a build. `loadbalance=sticky` (the default) sends the
//! same context to the same pod, where its cache is: the key is a hash of
//! the normalized context (a git remote without its ref, or an absolute
//! path), and the pod is chosen by rendezvous hashing over the running
//! pods' names, so a pod that comes or goes moves only the contexts it
//! takes or took. `random` picks any running pod.

use sha2::{Digest, Sha256};
use std::path::Path;

/// The routing key of a build context, as written on the command line.
pub fn context_key(context: &str) -> String {
    hex::encode(Sha256::digest(normalize(context).as_bytes()))
}

/// A remote context without its `#ref:subdir` fragment, lower-case scheme
/// and host, no trailing `.git` or `/`; a local directory as its absolute
/// path (symlinks resolved when it exists); `-` (stdin) as itself.
pub fn normalize(context: &str) -> String {
    if context == "-" {
        return context.to_string();
    }
    let remote = context.contains("://") || (context.starts_with("git@") && context.contains(':'));
    if remote {
        let base = context.split('#').next().unwrap_or(context);
        let base = base.split('?').next().unwrap_or(base);
        let (scheme, rest) = match base.split_once("://") {
            Some((s, r)) => (format!("{}://", s.to_ascii_lowercase()), r),
            None => (String::new(), base),
        };
        let (host, path) = match rest.find(['/', ':']) {
            Some(i) => rest.split_at(i),
            None => (rest, ""),
        };
        let path = path.trim_end_matches('/');
        let path = path.strip_suffix(".git").unwrap_or(path);
        return format!("{scheme}{}{path}", host.to_ascii_lowercase());
    }
    let p = Path::new(context);
    let abs = std::fs::canonicalize(p).unwrap_or_else(|_| {
        std::env::current_dir()
            .map(|d| d.join(p))
            .unwrap_or_else(|_| p.to_path_buf())
    });
    abs.display().to_string()
}

/// The pod for `key` among `pods` (names): the one whose hash with the
/// key is highest. `None` when there is no pod.
pub fn sticky<'a>(key: &str, pods: &'a [String]) -> Option<&'a String> {
    pods.iter().max_by_key(|name| {
        let mut h = Sha256::new();
        h.update(key.as_bytes());
        h.update([0]);
        h.update(name.as_bytes());
        let d = h.finalize();
        // Ties (impossible in practice) go to the smaller name.
        (
            u64::from_be_bytes(d[..8].try_into().unwrap_or([0; 8])),
            std::cmp::Reverse(*name),
        )
    })
}

/// Any pod.
pub fn random(pods: &[String]) -> Option<&String> {
    use rand::seq::SliceRandom;
    pods.choose(&mut rand::thread_rng())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remote_contexts_normalize_to_the_repository() {
        let same = [
            "https://GitHub.com/owner/repo.git#main:docker_stuff",
            "https://github.com/owner/repo",
            "https://github.com/owner/repo.git?ref=v1&subdir=x",
            "HTTPS://github.com/owner/repo/",
        ];
        for c in same {
            assert_eq!(normalize(c), "https://github.com/owner/repo", "{c}");
        }
        assert_eq!(
            normalize("git@github.com:owner/repo.git#tag"),
            "git@github.com:owner/repo"
        );
        assert_ne!(context_key("git://h/a.git"), context_key("git://h/b.git"));
    }

    #[test]
    fn local_contexts_normalize_to_absolute_paths() {
        let d = tempfile::tempdir().expect("tempdir");
        let real = std::fs::canonicalize(d.path()).expect("canonical");
        let link = real.join("link");
        std::os::unix::fs::symlink(&real, &link).expect("symlink");
        assert_eq!(
            normalize(&link.display().to_string()),
            real.display().to_string()
        );
        assert_eq!(
            context_key(&real.join(".").display().to_string()),
            context_key(&real.display().to_string())
        );
        assert!(normalize("relative/dir").starts_with('/'));
        assert_eq!(normalize("-"), "-");
    }

    #[test]
    fn sticky_routing_is_stable_and_moves_little() {
        let pods: Vec<String> = (0..4).map(|i| format!("kube-5d9f-{i}")).collect();
        assert_eq!(sticky("k", &[]), None);
        let keys: Vec<String> = (0..200)
            .map(|i| context_key(&format!("/ctx/{i}")))
            .collect();
        // The same key, the same pod, whatever the order of the list.
        let mut reversed = pods.clone();
        reversed.reverse();
        for k in &keys {
            assert_eq!(sticky(k, &pods), sticky(k, &reversed));
        }
        // Every pod takes some contexts.
        for p in &pods {
            assert!(keys.iter().any(|k| sticky(k, &pods) == Some(p)), "{p} idle");
        }
        // A pod going away moves only its own contexts.
        let fewer = &pods[..3];
        for k in &keys {
            let before = sticky(k, &pods).expect("pod");
            if before != &pods[3] {
                assert_eq!(sticky(k, fewer), Some(before));
            }
        }
        assert!(random(&pods).is_some_and(|p| pods.contains(p)));
    }
}
