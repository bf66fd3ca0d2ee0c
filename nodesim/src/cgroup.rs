//! Memory limits of executed containers: one cgroup per container under `baton-nodesim/`, v2
//! when the unified hierarchy is mounted (`/sys/fs/cgroup/cgroup.controllers` exists), else the
//! v1 memory controller (`/sys/fs/cgroup/memory`). The limit holds swap too; the kernel's OOM
//! killer acts inside the cgroup, and its `oom_kill` count tells the container's end apart from
//! any other SIGKILL.

use std::path::{Path, PathBuf};
use std::time::Duration;

/// The cgroup filesystem.
const CGROUP_ROOT: &str = "/sys/fs/cgroup";
/// The simulator's subtree in either hierarchy.
const SUBTREE: &str = "baton-nodesim";
/// How long a removed container's cgroup is retried while its processes die.
const REMOVE_TIMEOUT: Duration = Duration::from_secs(10);

/// One container's memory cgroup, removed on drop (once its processes are gone).
#[derive(Debug)]
pub(super) struct MemoryCgroup {
    dir: PathBuf,
    /// The file holding the `oom_kill` count.
    events: PathBuf,
}

impl MemoryCgroup {
    /// Creates the cgroup `name` limited to `bytes` of memory (and no swap).
    ///
    /// # Errors
    /// When no memory cgroup hierarchy is mounted or it cannot be written: the message says so.
    pub(super) fn create(name: &str, bytes: u64) -> Result<Self, String> {
        let root = Path::new(CGROUP_ROOT);
        let failed = |what: &Path, e: std::io::Error| {
            format!(
                "node simulator: cannot set the memory limit through cgroup {}: {e} (the simulator runs limited containers as root, with a writable cgroup v2 or v1 memory hierarchy)",
                what.display()
            )
        };
        let write = |path: &Path, value: &str| std::fs::write(path, value).map_err(|e| failed(path, e));
        if root.join("cgroup.controllers").exists() {
            let parent = root.join(SUBTREE);
            std::fs::create_dir_all(&parent).map_err(|e| failed(&parent, e))?;
            write(&root.join("cgroup.subtree_control"), "+memory")?;
            write(&parent.join("cgroup.subtree_control"), "+memory")?;
            let dir = parent.join(name);
            std::fs::create_dir_all(&dir).map_err(|e| failed(&dir, e))?;
            write(&dir.join("memory.max"), &bytes.to_string())?;
            let _ = std::fs::write(dir.join("memory.swap.max"), "0");
            Ok(Self {
                events: dir.join("memory.events"),
                dir,
            })
        } else {
            let dir = root.join("memory").join(SUBTREE).join(name);
            std::fs::create_dir_all(&dir).map_err(|e| failed(&dir, e))?;
            write(&dir.join("memory.limit_in_bytes"), &bytes.to_string())?;
            // Absent without swap accounting: then there is no swap to limit.
            let _ = std::fs::write(dir.join("memory.memsw.limit_in_bytes"), bytes.to_string());
            Ok(Self {
                events: dir.join("memory.oom_control"),
                dir,
            })
        }
    }

    /// The directory processes join.
    pub(super) fn dir(&self) -> &Path {
        &self.dir
    }

    /// Whether the OOM killer killed a process of the cgroup.
    pub(super) fn oom_killed(&self) -> bool {
        std::fs::read_to_string(&self.events).is_ok_and(|text| {
            text.lines()
                .filter_map(|line| line.strip_prefix("oom_kill "))
                .any(|count| count.trim().parse::<u64>().is_ok_and(|n| n > 0))
        })
    }
}

impl Drop for MemoryCgroup {
    fn drop(&mut self) {
        let dir = self.dir.clone();
        std::thread::spawn(move || {
            let deadline = std::time::Instant::now() + REMOVE_TIMEOUT;
            while std::fs::remove_dir(&dir).is_err() && dir.exists() && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(100));
            }
        });
    }
}
