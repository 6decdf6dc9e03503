//! The sandbox: one wasmtime `Engine` for the process, compiled components
//! cached on disk, a pre-instantiated template per plugin, and limited
//! instances: fresh for every call ([`Plugin`]), or kept warm between the
//! calls of one connection ([`PluginConnection`]).
//!
//! Each supported WIT version has its own module (`v0_1`) that only converts
//! types and dispatches; everything else lives here once.

mod output;
mod record;
mod v0_1;
mod world;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use wasmtime::component::{Component, Linker, ResourceTable};
use wasmtime::{
    Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, ResourceLimiter, Store,
    Trap, UpdateDeadline,
};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use self::output::GuestOutput;

use crate::connector::{
    BatchItem, CallContext, ConnectorError, ListRequest, Manifest, Op, Page, RemoveOutcome,
    UpsertOutcome, UpsertRequest,
};
use crate::http::ConnectionHttp;
use crate::metrics::{Metrics, TrapCause};

/// How often the epoch advances; the granularity of CPU-time checks.
const EPOCH_TICK: Duration = Duration::from_millis(5);

/// Layout of a cache entry: the serialized component, then the CRC-32 of
/// it. The checksum catches a torn or corrupted file, not a substitute: what
/// keeps one out is that a cache directory or entry owned by another user,
/// or writable by group or others, is never read (see
/// [`Runtime::trusted_cache_dir`]). A SHA-256 here cost 1.5 ms of a 1.7 ms
/// cold start.
const CACHE_FORMAT: &[u8] = b"serialized+crc32";

/// Limits every plugin instance runs under (not to be confused with the
/// sandbox, which is `weft-sandbox`'s vendor emulators).
#[derive(Debug, Clone)]
pub struct InstanceLimits {
    /// Largest linear memory an instance may grow to.
    pub memory_bytes: usize,
    /// CPU time a call may use: the time the thread running the call spends
    /// on it (the plugin's code and the host's own work for its imports),
    /// summed over every stretch it runs. Waiting does not count: on HTTP,
    /// or for a core on a busy machine.
    pub cpu_time: Duration,
    /// Wall-clock deadline for a whole call, HTTP included.
    pub call_timeout: Duration,
    /// Log lines a call may emit before the rest are dropped.
    pub log_lines_per_call: usize,
    /// Largest record a plugin may return (list, get, upsert, batch), in
    /// bytes of JSON text.
    pub max_record_bytes: usize,
    /// Most a plugin may hand the host in one crossing: a call's whole
    /// reply, or one import's arguments (an HTTP request). Counted as the
    /// host holds it (string bytes plus 24 bytes a list element) and
    /// enforced while the reply is copied out of the instance, before the
    /// host allocates for it.
    pub max_reply_bytes: usize,
    /// Instances that may exist at once in the runtime (the size of its
    /// instance pool). A call that finds none free waits for one, first
    /// come first served, within its deadline; idle warm instances are
    /// given up first.
    pub instances: u32,
}

impl Default for InstanceLimits {
    fn default() -> Self {
        InstanceLimits {
            memory_bytes: 64 << 20,
            cpu_time: Duration::from_secs(5),
            call_timeout: Duration::from_secs(300),
            log_lines_per_call: 1000,
            max_record_bytes: 1 << 20,
            max_reply_bytes: 16 << 20,
            instances: 256,
        }
    }
}

/// How the runtime is set up.
#[derive(Debug, Clone, Default)]
pub struct RuntimeConfig {
    /// Where compiled components are cached; `None` compiles every time.
    pub cache_dir: Option<PathBuf>,
    /// Limits for every instance.
    pub limits: InstanceLimits,
}

/// Errors from loading or calling a plugin.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The engine could not be configured.
    #[error("failed to set up the wasm engine: {0}")]
    Engine(String),
    /// The bytes are not a usable component.
    #[error("plugin {plugin}: not a valid connector component: {reason}")]
    InvalidComponent {
        /// Plugin name or path.
        plugin: String,
        /// Why.
        reason: String,
    },
    /// The component imports what this host does not serve, or does not
    /// export a connector interface this host serves (weft:connector@0.1.0).
    #[error("plugin {plugin}: cannot run here: {reason}")]
    UnsupportedContract {
        /// Plugin name or path.
        plugin: String,
        /// What is missing or extra, and how to build without it.
        reason: String,
    },
    /// The plugin was stopped: trap, limit or deadline.
    #[error("plugin {plugin}: {op} was stopped: {reason}")]
    Trapped {
        /// Plugin name.
        plugin: String,
        /// The op being called.
        op: &'static str,
        /// What happened, naming the limit hit.
        reason: String,
        /// Which limit (or panic) it was, for the metrics.
        cause: TrapCause,
    },
    /// The plugin answered with a typed error.
    #[error("plugin {plugin}: {op} failed: {error}")]
    Connector {
        /// Plugin name.
        plugin: String,
        /// The op being called.
        op: &'static str,
        /// The connector's error.
        error: ConnectorError,
    },
    /// The plugin answered something that breaks the contract.
    #[error("plugin {plugin}: {op} broke the contract: {reason}")]
    Contract {
        /// Plugin name.
        plugin: String,
        /// The op being called.
        op: &'static str,
        /// What was wrong.
        reason: String,
    },
}

impl RuntimeError {
    /// The connector's typed error, when that is what failed the call.
    pub fn connector_error(&self) -> Option<&ConnectorError> {
        match self {
            RuntimeError::Connector { error, .. } => Some(error),
            _ => None,
        }
    }
}

/// Result alias for this module.
pub type Result<T, E = RuntimeError> = std::result::Result<T, E>;

/// The process's wasm runtime.
#[derive(Clone)]
pub struct Runtime {
    inner: Arc<RuntimeInner>,
}

struct RuntimeInner {
    engine: Engine,
    linker: Linker<InstanceState>,
    config: RuntimeConfig,
    ticker_stop: Arc<AtomicBool>,
    /// Whether the refusal of an untrusted cache directory was logged.
    cache_refusal_logged: AtomicBool,
    /// One permit per instance slot of the pool; every live instance holds
    /// its share.
    slots: Arc<tokio::sync::Semaphore>,
    /// Calls waiting for a slot: while any wait, a finished instance is
    /// dropped, not kept warm.
    waiting: std::sync::atomic::AtomicUsize,
    /// Every connection's idle instances, to give up when a call waits.
    idle_lists: std::sync::Mutex<Vec<std::sync::Weak<IdleList>>>,
    /// Idle instances held by every connection.
    warm_idle: std::sync::atomic::AtomicUsize,
}

/// One connection's idle instances.
type IdleList = std::sync::Mutex<Vec<Instance>>;

impl RuntimeInner {
    /// Idle instances kept in the process at most: half the slots, so that
    /// warm instances never leave calls short of them.
    fn warm_limit(&self) -> usize {
        (self.config.limits.instances / 2) as usize
    }

    /// Drops idle instances of any connection until `permits` slots are
    /// free again or none is idle.
    fn give_up_idle(&self, permits: usize) {
        let lists: Vec<Arc<IdleList>> = {
            let mut registry =
                self.idle_lists.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            registry.retain(|list| list.strong_count() > 0);
            registry.iter().filter_map(std::sync::Weak::upgrade).collect()
        };
        let mut freed = 0;
        for list in lists {
            while freed < permits {
                let instance = list.lock().unwrap_or_else(std::sync::PoisonError::into_inner).pop();
                let Some(instance) = instance else { break };
                self.warm_idle.fetch_sub(1, Ordering::Relaxed);
                freed += instance.slot.num_permits();
                drop(instance);
            }
            if freed >= permits {
                return;
            }
        }
    }
}

/// Counts a call among those waiting for a slot while it lives.
struct Waiting<'a>(&'a std::sync::atomic::AtomicUsize);

impl<'a> Waiting<'a> {
    fn enter(count: &'a std::sync::atomic::AtomicUsize) -> Self {
        count.fetch_add(1, Ordering::Relaxed);
        Waiting(count)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime").field("config", &self.inner.config).finish_non_exhaustive()
    }
}

impl Drop for RuntimeInner {
    fn drop(&mut self) {
        self.ticker_stop.store(true, Ordering::Relaxed);
    }
}

impl Runtime {
    /// Creates the engine, the linker and the epoch ticker.
    pub fn new(config: RuntimeConfig) -> Result<Self> {
        let mut wasm = Config::new();
        wasm.wasm_component_model(true);
        wasm.epoch_interruption(true);
        wasm.max_wasm_stack(1 << 20);
        // `WEFT_WASM_PROFILE=perfmap` names the compiled guest functions in
        // /tmp/perf-PID.map, so `perf record`/`perf report` show where a
        // connector's time goes instead of bare addresses.
        if std::env::var_os("WEFT_WASM_PROFILE").is_some_and(|v| v == "perfmap") {
            wasm.profiler(wasmtime::ProfilingStrategy::PerfMap);
        }
        let slots = config.limits.instances.max(1);
        let mut pool = PoolingAllocationConfig::default();
        // Python (componentize-py, 38 core instances with `--stub-wasi`)
        // and JavaScript (componentize-js) components hold many core
        // instances and tables; a core instance in the pool is only a count,
        // a table a small reservation of address space.
        pool.total_component_instances(slots)
            .total_core_instances(slots.saturating_mul(MAX_CORE_INSTANCES))
            .total_memories(slots)
            .total_tables(slots.saturating_mul(TABLES_PER_SLOT))
            .total_stacks(slots)
            .max_memories_per_component(4)
            .max_core_instances_per_component(MAX_CORE_INSTANCES)
            .max_tables_per_component(MAX_TABLES)
            // Hard ceiling; each store's limiter enforces the configured cap.
            .max_memory_size(config.limits.memory_bytes.max(1 << 20))
            // A slot's pages stay mapped when its instance goes: the next
            // instance in the slot finds them resident instead of faulting
            // each one in again. Where the kernel has PAGEMAP_SCAN (Linux
            // 6.7), only the pages the last instance wrote are reset;
            // elsewhere the low KEEP_RESIDENT bytes are. Either way a
            // fresh instance reads exactly its initial image, as before.
            .linear_memory_keep_resident(KEEP_RESIDENT)
            .table_keep_resident(KEEP_RESIDENT_TABLES)
            .pagemap_scan(wasmtime::Enabled::Auto);
        wasm.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        let engine = match Engine::new(&wasm) {
            Ok(engine) => engine,
            // The pool reserves its address space up front (about 1 TiB,
            // mostly guard regions); where that is refused (`ulimit -v`,
            // valgrind), instances are allocated one by one instead: slower
            // to create, the same limits.
            Err(pool_error) => {
                wasm.allocation_strategy(InstanceAllocationStrategy::OnDemand);
                let engine =
                    Engine::new(&wasm).map_err(|e| RuntimeError::Engine(format!("{e:#}")))?;
                tracing::warn!(error = %format!("{pool_error:#}"), "cannot reserve the instance pool; allocating instances on demand");
                engine
            }
        };

        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)
            .map_err(|e| RuntimeError::Engine(format!("{e:#}")))?;
        v0_1::add_to_linker(&mut linker).map_err(|e| RuntimeError::Engine(format!("{e:#}")))?;

        let ticker_stop = Arc::new(AtomicBool::new(false));
        let stop = ticker_stop.clone();
        let ticking = engine.weak();
        std::thread::Builder::new()
            .name("weft-epoch".into())
            .spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(EPOCH_TICK);
                    match ticking.upgrade() {
                        Some(engine) => engine.increment_epoch(),
                        None => break,
                    }
                }
            })
            .map_err(|e| RuntimeError::Engine(format!("cannot start the epoch thread: {e}")))?;

        let slots = Arc::new(tokio::sync::Semaphore::new(slots as usize));
        Ok(Runtime {
            inner: Arc::new(RuntimeInner {
                engine,
                linker,
                config,
                ticker_stop,
                cache_refusal_logged: AtomicBool::new(false),
                slots,
                waiting: Default::default(),
                idle_lists: Default::default(),
                warm_idle: Default::default(),
            }),
        })
    }

    /// The limits instances run under.
    pub fn limits(&self) -> &InstanceLimits {
        &self.inner.config.limits
    }

    /// Warm instances kept idle for the next call, all plugins.
    pub fn instances_idle(&self) -> usize {
        self.inner.warm_idle.load(Ordering::Relaxed)
    }

    /// Compiles (or loads from the cache) and pre-instantiates a plugin, and
    /// reads its manifest.
    ///
    /// The component's imports and exports are checked first, before it is
    /// compiled; a component refused at any step is never cached.
    pub async fn load(&self, name: &str, wasm: &[u8]) -> Result<Plugin> {
        let started = Instant::now();
        let imports = match world::World::read(wasm) {
            Err(reason) => {
                return Err(RuntimeError::InvalidComponent { plugin: name.to_owned(), reason });
            }
            Ok(Some(world)) => {
                if let Some(reason) = world.refusal() {
                    return Err(RuntimeError::UnsupportedContract {
                        plugin: name.to_owned(),
                        reason,
                    });
                }
                world.imports
            }
            // Not readable as a component: compiling it says why.
            Ok(None) => Vec::new(),
        };
        let (component, cache) = self.component(name, wasm)?;
        let compiled = started.elapsed();
        let unsupported = |e: wasmtime::Error| RuntimeError::UnsupportedContract {
            plugin: name.to_owned(),
            reason: format!("it does not fit weft:connector@0.1.0: {}", error_chain(&e)),
        };
        let pre = self.inner.linker.instantiate_pre(&component).map_err(unsupported)?;
        let bindings = v0_1::Bindings::new(pre).map_err(unsupported)?;
        let slot_cost = self.slot_cost(name, &component)?;
        let cache_hit = matches!(cache, CacheEntry::Hit);
        if let CacheEntry::Write(dir, path) = cache
            && let Ok(serialized) = component.serialize()
        {
            // A cache we cannot write is a slower start, not a failure.
            if let Err(e) = write_cached(&dir, &path, &serialized) {
                tracing::warn!(path = %path.display(), error = %e, "cannot write the component cache");
            }
        }
        let mut plugin = Plugin {
            name: name.to_owned(),
            runtime: self.clone(),
            bindings,
            slot_cost,
            manifest: placeholder_manifest(name),
            digest: digest(wasm),
            imports,
            load: LoadInfo { cache_hit, compile_or_load: compiled, total: Duration::ZERO },
        };
        plugin.manifest = plugin.describe().await?;
        plugin.load.total = started.elapsed();
        Ok(plugin)
    }

    /// The slot permits one instance of `component` holds: the pool has a
    /// memory per slot and [`TABLES_PER_SLOT`] tables, so a component with
    /// more memories or tables takes more than one slot.
    fn slot_cost(&self, name: &str, component: &Component) -> Result<u32> {
        let needs = component.resources_required();
        let memories = needs.as_ref().map_or(1, |n| n.num_memories);
        let tables = needs.as_ref().map_or(TABLES_PER_SLOT, |n| n.num_tables);
        let cost = memories.max(tables.div_ceil(TABLES_PER_SLOT)).max(1);
        if cost > self.inner.config.limits.instances.max(1) {
            return Err(RuntimeError::InvalidComponent {
                plugin: name.to_owned(),
                reason: format!(
                    "one instance needs {memories} memories and {tables} tables, more than the {} instance slots hold",
                    self.inner.config.limits.instances
                ),
            });
        }
        Ok(cost)
    }

    /// Loads a plugin from a `.wasm` file.
    pub async fn load_file(&self, path: &Path) -> Result<Plugin> {
        let name = path.display().to_string();
        let wasm = std::fs::read(path).map_err(|e| RuntimeError::InvalidComponent {
            plugin: name.clone(),
            reason: format!("cannot read: {e}"),
        })?;
        self.load(&name, &wasm).await
    }

    /// The compiled component, from the cache when it holds it; a newly
    /// compiled one says where to cache it once it has been accepted.
    fn component(&self, name: &str, wasm: &[u8]) -> Result<(Component, CacheEntry)> {
        let engine = &self.inner.engine;
        let invalid = |e: wasmtime::Error| RuntimeError::InvalidComponent {
            plugin: name.to_owned(),
            reason: error_chain(&e),
        };
        let Some(dir) = self.trusted_cache_dir() else {
            return Ok((Component::new(engine, wasm).map_err(invalid)?, CacheEntry::None));
        };
        let path = dir.join(format!("{}.cwasm", self.cache_key(wasm)));
        if let Some(component) = self.read_cached(&path) {
            return Ok((component, CacheEntry::Hit));
        }
        let component = Component::new(engine, wasm).map_err(invalid)?;
        Ok((component, CacheEntry::Write(dir.to_path_buf(), path)))
    }

    /// Content hash of the wasm plus the engine's compatibility hash, so a
    /// new wasmtime or a new configuration never loads an old artifact.
    fn cache_key(&self, wasm: &[u8]) -> String {
        use std::hash::{Hash, Hasher};
        let mut engine_hash = std::hash::DefaultHasher::new();
        self.inner.engine.precompile_compatibility_hash().hash(&mut engine_hash);
        let mut digest = Sha256::new();
        digest.update(wasm);
        digest.update(engine_hash.finish().to_le_bytes());
        digest.update(env!("CARGO_PKG_VERSION").as_bytes());
        digest.update(CACHE_FORMAT);
        hex::encode(&digest.finalize()[..20])
    }

    /// The cache directory, if one is configured and may be trusted with
    /// native code: owned by this user and writable by no one else (a
    /// missing one is created so, at the first write). Otherwise components
    /// are compiled in memory, and the first refusal is logged saying why.
    fn trusted_cache_dir(&self) -> Option<&Path> {
        let dir = self.inner.config.cache_dir.as_deref()?;
        let refused = match std::fs::metadata(dir) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Some(dir),
            Err(e) => format!("it cannot be read: {e}"),
            Ok(metadata) if !metadata.is_dir() => "it is not a directory".to_owned(),
            Ok(metadata) => match untrusted(&metadata) {
                None => return Some(dir),
                Some(why) => why,
            },
        };
        if !self.inner.cache_refusal_logged.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                path = %dir.display(),
                "not using the component cache: {refused}; compiling components in memory instead (make it this user's, mode 700, to use it)"
            );
        }
        None
    }

    fn read_cached(&self, path: &Path) -> Option<Component> {
        let mut file = std::fs::File::open(path).ok()?;
        // Checked on the open file, so what is read is what was checked.
        let metadata = file.metadata().ok()?;
        let refused = if metadata.is_file() {
            untrusted(&metadata)
        } else {
            Some("it is not a file".to_owned())
        };
        if let Some(why) = refused {
            tracing::warn!(path = %path.display(), "ignoring a component cache entry: {why}");
            return None;
        }
        // The checksum is read through the file in chunks, so a 35 MB
        // artifact is never held in memory; wasmtime then maps the file
        // itself, which also lets it map a module's memory image straight
        // from the file instead of copying it.
        if !checksum_holds(&mut file, metadata.len()) {
            tracing::warn!(path = %path.display(), "ignoring a corrupt component cache entry");
            return None;
        }
        // On Linux the file checked above is the one mapped, through its
        // descriptor, even if the path was replaced meanwhile.
        #[cfg(target_os = "linux")]
        let mapped =
            PathBuf::from(format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&file)));
        #[cfg(not(target_os = "linux"))]
        let mapped = path.to_path_buf();
        #[expect(
            unsafe_code,
            reason = "deserializing native code; the file is ours (content-addressed, written atomically with mode 0600 in a directory only this user may write, never changed in place, its owner and mode checked on the open file, checksummed against corruption) and wasmtime checks engine compatibility"
        )]
        let component = unsafe { Component::deserialize_file(&self.inner.engine, &mapped) };
        drop(file);
        component.map_err(|e| tracing::warn!(path = %path.display(), error = %error_chain(&e), "ignoring an unusable cache entry")).ok()
    }
}

/// Where a compiled component came from, or is to be cached.
enum CacheEntry {
    /// No cache is used.
    None,
    /// Read from the cache.
    Hit,
    /// Compiled now; to be written to this directory and file once the
    /// component has been accepted.
    Write(PathBuf, PathBuf),
}

/// Whether the CRC-32 trailer of a cache file of `len` bytes matches what
/// precedes it, read from its start in chunks.
fn checksum_holds(file: &mut std::fs::File, len: u64) -> bool {
    use std::io::Read as _;
    let Some(mut left) = len.checked_sub(4) else { return false };
    let mut hasher = crc32fast::Hasher::new();
    let mut chunk = vec![0u8; 1 << 20];
    while left > 0 {
        let want = chunk.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        let Some(buffer) = chunk.get_mut(..want) else { return false };
        if file.read_exact(buffer).is_err() {
            return false;
        }
        hasher.update(buffer);
        left -= want as u64;
    }
    let mut trailer = [0u8; 4];
    file.read_exact(&mut trailer).is_ok() && hasher.finalize().to_le_bytes() == trailer
}

fn write_cached(dir: &Path, path: &Path, serialized: &[u8]) -> std::io::Result<()> {
    let mut create = std::fs::DirBuilder::new();
    create.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut create, 0o700);
    create.create(dir)?;
    let mut file = tempfile::NamedTempFile::new_in(dir)?;
    std::io::Write::write_all(&mut file, serialized)?;
    std::io::Write::write_all(&mut file, &crc32fast::hash(serialized).to_le_bytes())?;
    file.persist(path).map_err(|e| e.error)?;
    Ok(())
}

/// Why a cache directory or entry with `metadata` may not be trusted with
/// native code: another user owns it, or group or others may write it.
#[cfg(unix)]
fn untrusted(metadata: &std::fs::Metadata) -> Option<String> {
    use std::os::unix::fs::MetadataExt as _;
    let me = rustix::process::geteuid().as_raw();
    if metadata.uid() != me {
        return Some(format!("it is owned by user {}, not by this user ({me})", metadata.uid()));
    }
    if metadata.mode() & 0o022 != 0 {
        return Some(format!(
            "its mode {:o} lets group or others write it",
            metadata.mode() & 0o777
        ));
    }
    None
}

/// Elsewhere the platform's own access control is what there is.
#[cfg(not(unix))]
fn untrusted(_metadata: &std::fs::Metadata) -> Option<String> {
    None
}

/// A component's SHA-256 in lower-case hex: what [`Plugin::digest`] gives
/// and what a connection pins (`plugin = { path, sha256 }`).
pub fn digest(wasm: &[u8]) -> String {
    hex::encode(Sha256::digest(wasm))
}

fn placeholder_manifest(name: &str) -> Manifest {
    Manifest {
        name: name.to_owned(),
        version: String::new(),
        vendor: String::new(),
        description: String::new(),
        default_base_url: String::new(),
        extra_hosts: Vec::new(),
        auth: crate::connector::AuthScheme::None,
        resources: Vec::new(),
        rate_limits: Vec::new(),
        settings: Vec::new(),
    }
}

/// How a plugin was loaded.
#[derive(Debug, Clone, Copy)]
pub struct LoadInfo {
    /// Whether the compiled component came from the disk cache.
    pub cache_hit: bool,
    /// Time to compile or deserialize.
    pub compile_or_load: Duration,
    /// Time until the manifest was read.
    pub total: Duration,
}

/// A page as a plugin returned it: its record count and cursor checked,
/// its records not yet. [`Listed::check`] is the only way to the records,
/// and checks each as [`Plugin`]'s other calls do (within the record limit,
/// exactly one JSON object); the executor runs it while the next page is
/// on its way, so the check costs a list step nothing on its critical path.
#[derive(Debug)]
pub struct Listed {
    page: Page,
    /// `None` when the records were checked already (or come from no
    /// plugin).
    check: Option<RecordCheck>,
}

impl Listed {
    /// A page whose records need no check: an endpoint that is no plugin,
    /// or a page [`PluginConnection::list`] checked.
    pub fn checked(page: Page) -> Listed {
        Listed { page, check: None }
    }

    /// Where the next page starts (checked already).
    pub fn next_cursor(&self) -> Option<&str> {
        self.page.next_cursor.as_deref()
    }

    /// How many records the page holds.
    pub fn len(&self) -> usize {
        self.page.records.len()
    }

    /// Whether the page holds no record.
    pub fn is_empty(&self) -> bool {
        self.page.records.is_empty()
    }

    /// The page, every record checked; a record that is not one JSON
    /// object, or is over the limit, is the plugin's contract breach.
    pub fn check(self) -> Result<Page> {
        let Some(check) = self.check else { return Ok(self.page) };
        let Page { records, next_cursor } = self.page;
        let count = records.len();
        let records = records
            .into_iter()
            .enumerate()
            .map(|(n, record)| {
                check.record("list", record, || format!("record {} of {count}", n + 1))
            })
            .collect::<Result<_>>()?;
        Ok(Page { records, next_cursor })
    }
}

/// What checking a plugin's record needs: who to blame, and the limit.
#[derive(Debug, Clone)]
struct RecordCheck {
    plugin: String,
    max_record_bytes: usize,
}

impl RecordCheck {
    /// `record` if it is within the record limit and exactly one JSON
    /// object (made one line if it spans lines); otherwise a contract
    /// breach naming `which` record.
    fn record(
        &self,
        op: &'static str,
        record: String,
        which: impl FnOnce() -> String,
    ) -> Result<String> {
        let contract =
            |reason: String| RuntimeError::Contract { plugin: self.plugin.clone(), op, reason };
        let limit = self.max_record_bytes;
        if record.len() > limit {
            return Err(contract(format!(
                "{} is {} bytes, over the record limit of {}",
                which(),
                record.len(),
                bytes(limit)
            )));
        }
        record::one_object(record).map_err(|e| contract(format!("{} {e}", which())))
    }
}

/// A loaded plugin: its template and manifest. Cheap to share.
pub struct Plugin {
    name: String,
    runtime: Runtime,
    bindings: v0_1::Bindings,
    /// Slot permits an instance holds (see [`Runtime::slot_cost`]).
    slot_cost: u32,
    manifest: Manifest,
    digest: String,
    /// The component's top-level imports, all served by this host.
    imports: Vec<String>,
    load: LoadInfo,
}

impl std::fmt::Debug for Plugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plugin")
            .field("name", &self.name)
            .field("digest", &self.digest)
            .finish_non_exhaustive()
    }
}

/// A call into a plugin, version-independent.
#[derive(Debug)]
pub(crate) enum Call {
    Describe,
    List(CallContext, ListRequest),
    Get(CallContext, String, String),
    Upsert(CallContext, UpsertRequest),
    UpsertBatch(CallContext, String, Vec<BatchItem>),
    Remove(CallContext, String, String),
    /// 0.2.0's `lookup`: resource, record.
    Lookup(CallContext, String, String),
}

impl Call {
    fn op(&self) -> &'static str {
        match self {
            Call::Describe => "describe",
            Call::List(..) => Op::List.as_str(),
            Call::Get(..) => Op::Get.as_str(),
            Call::Upsert(..) => Op::Upsert.as_str(),
            Call::UpsertBatch(..) => Op::UpsertBatch.as_str(),
            Call::Remove(..) => Op::Remove.as_str(),
            Call::Lookup(..) => "lookup",
        }
    }
}

/// A plugin's answer, version-independent.
#[derive(Debug)]
pub(crate) enum Reply {
    Manifest(Manifest),
    Page(Page),
    Record(Option<String>),
    Upserted(UpsertOutcome),
    Batch(Vec<std::result::Result<UpsertOutcome, ConnectorError>>),
    Removed(RemoveOutcome),
}

impl Reply {
    /// What kind of answer it is, for a message (never its content, which
    /// may be large and is the plugin's).
    fn kind(&self) -> &'static str {
        match self {
            Reply::Manifest(_) => "a manifest",
            Reply::Page(_) => "a page",
            Reply::Record(_) => "a record",
            Reply::Upserted(_) => "an upsert outcome",
            Reply::Batch(_) => "batch outcomes",
            Reply::Removed(_) => "a remove outcome",
        }
    }
}

/// Longest cursor a plugin may return: it is stored with every page.
const MAX_CURSOR_BYTES: usize = 64 << 10;

/// Longest message of a plugin's typed error or log line, in characters;
/// the rest is cut, saying how much.
const MAX_MESSAGE_CHARS: usize = 2000;

/// `n` bytes for a message, exact: `64 MiB`, or `67174400 bytes (64.06 MiB)`.
fn bytes(n: usize) -> String {
    const MIB: usize = 1 << 20;
    const KIB: usize = 1 << 10;
    if n >= MIB && n.is_multiple_of(MIB) {
        format!("{} MiB", n / MIB)
    } else if n >= KIB && n.is_multiple_of(KIB) && n < MIB {
        format!("{} KiB", n / KIB)
    } else if n >= MIB {
        format!("{n} bytes ({:.2} MiB)", n as f64 / MIB as f64)
    } else {
        format!("{n} bytes")
    }
}

/// Text from a plugin made safe to print and store: control characters,
/// line and paragraph separators and bidirectional overrides escaped (a
/// plugin must not forge a host log line or recolour a terminal), and cut
/// to [`MAX_MESSAGE_CHARS`].
fn plugin_text(text: &str) -> String {
    plugin_text_within(text, MAX_MESSAGE_CHARS)
}

/// [`plugin_text`] without the cut, for text already bounded (the kept
/// tail of a guest's stderr).
fn escaped(text: &str) -> String {
    plugin_text_within(text, usize::MAX)
}

fn plugin_text_within(text: &str, max_chars: usize) -> String {
    let mut out = String::with_capacity(text.len().min(max_chars.saturating_add(32)));
    for (kept, (at, c)) in text.char_indices().enumerate() {
        if kept == max_chars {
            out.push_str(&format!("… ({} more bytes)", text.len() - at));
            break;
        }
        if c.is_control()
            || matches!(c, '\u{2028}' | '\u{2029}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
        {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// A plugin's typed error with its message made safe ([`plugin_text`]).
fn plugin_error(error: ConnectorError) -> ConnectorError {
    error.map_message(|m| plugin_text(&m))
}

impl Plugin {
    /// The name it was loaded under (built-in name or path).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// What the plugin says about itself.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// SHA-256 of the component bytes.
    pub fn digest(&self) -> &str {
        &self.digest
    }

    /// What the component imports (`weft:connector/http@0.1.0`,
    /// `wasi:random/random@0.2.3`, …): the host interfaces it asks for.
    pub fn imports(&self) -> &[String] {
        &self.imports
    }

    /// How loading went.
    pub fn load_info(&self) -> LoadInfo {
        self.load
    }

    /// Whether the component exports `weft:connector@0.2.0`'s `lookup`, so
    /// a dry run can ask what an upsert would match.
    pub fn offers_lookup(&self) -> bool {
        self.bindings.offers_lookup()
    }

    async fn describe(&self) -> Result<Manifest> {
        match self.call(None, Call::Describe).await? {
            Reply::Manifest(m) => Ok(m),
            other => Err(self.contract("describe", format!("unexpected reply {}", other.kind()))),
        }
    }

    /// Reads one page, in a fresh instance.
    pub async fn list(
        &self,
        http: &Arc<ConnectionHttp>,
        ctx: CallContext,
        request: ListRequest,
    ) -> Result<Page> {
        let max = request.page_size as usize;
        self.page(self.call(Some(http), Call::List(ctx, request)).await?, max)
    }

    /// Reads one record, in a fresh instance.
    pub async fn get(
        &self,
        http: &Arc<ConnectionHttp>,
        ctx: CallContext,
        resource: &str,
        id: &str,
    ) -> Result<Option<String>> {
        self.record(
            "get",
            self.call(Some(http), Call::Get(ctx, resource.to_owned(), id.to_owned())).await?,
        )
    }

    /// The record an upsert of `record` would update, without writing
    /// (`weft:connector@0.2.0`'s `lookup`), in a fresh instance.
    pub async fn lookup(
        &self,
        http: &Arc<ConnectionHttp>,
        ctx: CallContext,
        resource: &str,
        record: &str,
    ) -> Result<Option<String>> {
        self.record(
            "lookup",
            self.call(Some(http), Call::Lookup(ctx, resource.to_owned(), record.to_owned()))
                .await?,
        )
    }

    /// Creates or updates one record, in a fresh instance.
    pub async fn upsert(
        &self,
        http: &Arc<ConnectionHttp>,
        ctx: CallContext,
        request: UpsertRequest,
    ) -> Result<UpsertOutcome> {
        self.upserted(self.call(Some(http), Call::Upsert(ctx, request)).await?)
    }

    /// Creates or updates many records, in a fresh instance.
    pub async fn upsert_batch(
        &self,
        http: &Arc<ConnectionHttp>,
        ctx: CallContext,
        resource: &str,
        items: Vec<BatchItem>,
    ) -> Result<Vec<std::result::Result<UpsertOutcome, ConnectorError>>> {
        let count = items.len();
        self.batch(
            self.call(Some(http), Call::UpsertBatch(ctx, resource.to_owned(), items)).await?,
            count,
        )
    }

    /// Removes one record, in a fresh instance.
    pub async fn remove(
        &self,
        http: &Arc<ConnectionHttp>,
        ctx: CallContext,
        resource: &str,
        id: &str,
    ) -> Result<RemoveOutcome> {
        self.removed(
            self.call(Some(http), Call::Remove(ctx, resource.to_owned(), id.to_owned())).await?,
        )
    }

    fn page(&self, reply: Reply, max: usize) -> Result<Page> {
        self.listed(reply, max)?.check()
    }

    /// The page of a `list` reply with its count and cursor checked, its
    /// records left to [`Listed::check`].
    fn listed(&self, reply: Reply, max: usize) -> Result<Listed> {
        let op = "list";
        let page = match reply {
            Reply::Page(page) => page,
            other => return Err(self.contract(op, format!("unexpected reply {}", other.kind()))),
        };
        if page.records.len() > max {
            return Err(self.contract(
                op,
                format!("returned {} records for a page size of {max}", page.records.len()),
            ));
        }
        if let Some(cursor) = &page.next_cursor
            && cursor.len() > MAX_CURSOR_BYTES
        {
            return Err(self.contract(
                op,
                format!(
                    "returned a cursor of {} bytes; a cursor may hold at most {}",
                    cursor.len(),
                    bytes(MAX_CURSOR_BYTES)
                ),
            ));
        }
        Ok(Listed { page, check: Some(self.record_check()) })
    }

    /// What checking this plugin's records needs.
    fn record_check(&self) -> RecordCheck {
        RecordCheck {
            plugin: self.name.clone(),
            max_record_bytes: self.runtime.limits().max_record_bytes,
        }
    }

    fn record(&self, op: &'static str, reply: Reply) -> Result<Option<String>> {
        match reply {
            Reply::Record(Some(record)) => {
                self.record_check().record(op, record, || "the record".into()).map(Some)
            }
            Reply::Record(None) => Ok(None),
            other => Err(self.contract(op, format!("unexpected reply {}", other.kind()))),
        }
    }

    fn upserted(&self, reply: Reply) -> Result<UpsertOutcome> {
        match reply {
            Reply::Upserted(outcome) => {
                let record =
                    self.record_check().record("upsert", outcome.record, || "the record".into())?;
                Ok(UpsertOutcome { record, action: outcome.action })
            }
            other => Err(self.contract("upsert", format!("unexpected reply {}", other.kind()))),
        }
    }

    fn batch(
        &self,
        reply: Reply,
        count: usize,
    ) -> Result<Vec<std::result::Result<UpsertOutcome, ConnectorError>>> {
        let op = "upsert-batch";
        let outcomes = match reply {
            Reply::Batch(outcomes) => outcomes,
            other => return Err(self.contract(op, format!("unexpected reply {}", other.kind()))),
        };
        if outcomes.len() != count {
            return Err(self
                .contract(op, format!("returned {} outcomes for {count} items", outcomes.len())));
        }
        let check = self.record_check();
        outcomes
            .into_iter()
            .enumerate()
            .map(|(n, outcome)| match outcome {
                Ok(UpsertOutcome { record, action }) => {
                    let record = check.record(op, record, || {
                        format!("the record of outcome {} of {count}", n + 1)
                    })?;
                    Ok(Ok(UpsertOutcome { record, action }))
                }
                Err(error) => Ok(Err(plugin_error(error))),
            })
            .collect()
    }

    fn removed(&self, reply: Reply) -> Result<RemoveOutcome> {
        match reply {
            Reply::Removed(outcome) => Ok(outcome),
            other => Err(self.contract("remove", format!("unexpected reply {}", other.kind()))),
        }
    }

    fn contract(&self, op: &'static str, reason: String) -> RuntimeError {
        RuntimeError::Contract { plugin: self.name.clone(), op, reason }
    }

    /// Runs one call in a fresh instance under the instance limits.
    async fn call(&self, http: Option<&Arc<ConnectionHttp>>, call: Call) -> Result<Reply> {
        let op = call.op();
        let deadline = deadline_after(self.runtime.limits().call_timeout);
        let mut instance = self.instantiate(http.cloned(), op, deadline).await?;
        self.run(&mut instance, call, deadline).await
    }

    /// Waits for the instance slots one instance holds, first come first
    /// served, until `deadline`; idle warm instances are given up for it.
    async fn slot(
        &self,
        op: &'static str,
        deadline: Instant,
    ) -> Result<tokio::sync::OwnedSemaphorePermit> {
        let inner = &self.runtime.inner;
        match inner.slots.clone().try_acquire_many_owned(self.slot_cost) {
            Ok(slot) => return Ok(slot),
            Err(tokio::sync::TryAcquireError::NoPermits) => {}
            Err(tokio::sync::TryAcquireError::Closed) => {
                return Err(RuntimeError::Engine("the instance slots are closed".into()));
            }
        }
        let _waiting = Waiting::enter(&inner.waiting);
        inner.give_up_idle(self.slot_cost as usize);
        match tokio::time::timeout_at(
            deadline.into(),
            inner.slots.clone().acquire_many_owned(self.slot_cost),
        )
        .await
        {
            Ok(Ok(slot)) => Ok(slot),
            Ok(Err(_closed)) => Err(RuntimeError::Engine("the instance slots are closed".into())),
            Err(_) => Err(RuntimeError::Trapped {
                plugin: self.name.clone(),
                op,
                cause: TrapCause::Deadline,
                reason: format!(
                    "waited the whole call deadline of {:?} for a wasm instance: all {} slots stayed in use",
                    self.runtime.limits().call_timeout,
                    inner.config.limits.instances
                ),
            }),
        }
    }

    /// A new instance from the template, in a store of its own whose state
    /// holds only what the instance may touch: an empty WASI context and
    /// this connection's HTTP policy. It first waits for a slot.
    async fn instantiate(
        &self,
        http: Option<Arc<ConnectionHttp>>,
        op: &'static str,
        deadline: Instant,
    ) -> Result<Instance> {
        let slot = self.slot(op, deadline).await?;
        let limits = self.runtime.limits();
        let plugin: Arc<str> = self.name.as_str().into();
        let stderr = GuestOutput::stderr(plugin.clone());
        let mut wasi = WasiCtx::builder();
        // Deny by default: no env, args, preopens or sockets. Output goes to
        // tracing at debug; stderr's tail explains a trap.
        wasi.allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .stdout(GuestOutput::stdout(plugin))
            .stderr(stderr.clone());
        let state = InstanceState {
            wasi: wasi.build(),
            table: ResourceTable::new(),
            limiter: MemoryCap { cap: limits.memory_bytes, asked: None, peak: 0 },
            http,
            plugin: self.name.clone(),
            cpu: Arc::new(CpuMeter::default()),
            cpu_limit: limits.cpu_time,
            deadline,
            log_budget: limits.log_lines_per_call,
        };
        let mut store = Store::new(&self.runtime.inner.engine, state);
        store.limiter(|s| &mut s.limiter);
        // What the plugin hands the host is copied out of its memory by
        // wasmtime, which charges each string's bytes and each list's
        // elements against this before allocating: a reply (or an import's
        // arguments) past it fails the call without the host ever holding it.
        store.set_hostcall_fuel(limits.max_reply_bytes);
        // Host-side handles a plugin can make (WASI streams, pollables): a
        // connector needs a handful.
        store.data_mut().table.set_max_capacity(MAX_HOST_HANDLES);
        store.set_max_component_handles(MAX_HOST_HANDLES);
        // Runs on the thread running the guest, at each epoch tick.
        store.epoch_deadline_callback(|ctx| {
            let state = ctx.data();
            if state.cpu.spent() > state.cpu_limit {
                return Err(wasmtime::Error::new(LimitHit::CpuTime { limit: state.cpu_limit }));
            }
            // Under the limit: give the executor a turn so a busy plugin
            // never holds a tokio worker thread.
            Ok(UpdateDeadline::Yield(1))
        });
        // Instantiation runs the component's start functions: the same
        // limits as a call apply.
        store.set_epoch_deadline(1);
        let cpu = store.data().cpu.clone();
        let started = guarded("instantiate", self.bindings.instantiate(&mut store));
        match tokio::time::timeout_at(deadline.into(), cpu.metered(started)).await {
            Ok(Ok(Ok(exports))) => {
                // What the instance starts with (Python and JavaScript
                // runtimes start at 9-12 MiB); warm reuse judges growth
                // over it.
                let starting_memory = store.data().limiter.peak;
                Ok(Instance { store, exports, stderr, starting_memory, calls: 0, slot })
            }
            Ok(Ok(Err(error)) | Err(error)) => Err(RuntimeError::Trapped {
                plugin: self.name.clone(),
                op,
                reason: explain_trap(&error, &store, &stderr),
                cause: trap_cause(&error, &store),
            }),
            Err(_) => Err(RuntimeError::Trapped {
                plugin: self.name.clone(),
                op,
                cause: TrapCause::Deadline,
                reason: format!(
                    "exceeded the call deadline of {:?} while starting",
                    limits.call_timeout
                ),
            }),
        }
    }

    /// Runs one call on `instance` under the instance limits, each counted
    /// from zero (CPU time, log lines), until `deadline`.
    async fn run(&self, instance: &mut Instance, call: Call, deadline: Instant) -> Result<Reply> {
        let op = call.op();
        let limits = self.runtime.limits();
        let state = instance.store.data_mut();
        state.cpu.reset();
        state.deadline = deadline;
        state.log_budget = limits.log_lines_per_call;
        state.limiter.asked = None;
        instance.store.set_epoch_deadline(1);
        instance.calls += 1;

        let cpu = instance.store.data().cpu.clone();
        // A panic anywhere in the call (host code wasmtime runs for it)
        // fails this call only; the instance goes with it.
        let call = guarded("call", instance.exports.call(&mut instance.store, call));
        let outcome = tokio::time::timeout_at(deadline.into(), cpu.metered(call)).await;
        let trapped = |cause: TrapCause, reason: String| RuntimeError::Trapped {
            plugin: self.name.clone(),
            op,
            reason,
            cause,
        };
        match outcome {
            Err(_) => Err(trapped(
                TrapCause::Deadline,
                format!("exceeded the call deadline of {:?}", limits.call_timeout),
            )),
            Ok(Ok(Ok(Ok(reply)))) => Ok(reply),
            Ok(Ok(Ok(Err(error)))) => Err(RuntimeError::Connector {
                plugin: self.name.clone(),
                op,
                error: plugin_error(error),
            }),
            Ok(Ok(Err(error)) | Err(error)) => Err(trapped(
                trap_cause(&error, &instance.store),
                explain_trap(&error, &instance.store, &instance.stderr),
            )),
        }
    }
}

/// One instantiated component in its own store.
struct Instance {
    store: Store<InstanceState>,
    exports: v0_1::Exports,
    stderr: GuestOutput,
    /// Its largest linear memory once instantiated, before any call.
    starting_memory: usize,
    /// Calls run on it so far.
    calls: u32,
    /// Its share of the pool. Declared last, so it is released only after
    /// the store (and its pool slot) is gone: a call woken by it always
    /// finds the slot free.
    slot: tokio::sync::OwnedSemaphorePermit,
}

impl Instance {
    /// Whether the instance may serve another call of its connection after
    /// `outcome`. Anything but a normal return (a reply or a typed error)
    /// discards it: after a trap, a limit or a deadline the guest's state
    /// is whatever the interruption left. So does anything unusual that a
    /// fresh instance would not carry into the next call: output on stderr
    /// (a panic message starts there), a refused memory growth, memory grown
    /// more than [`WARM_GROWTH_BYTES`] over what the instance started with,
    /// or [`WARM_CALLS`] calls served.
    fn reusable(&self, outcome: &Result<Reply>) -> bool {
        let state = self.store.data();
        let returned = matches!(outcome, Ok(_) | Err(RuntimeError::Connector { .. }));
        returned
            && self.calls < WARM_CALLS
            && state.limiter.asked.is_none()
            && state.limiter.peak.saturating_sub(self.starting_memory) <= WARM_GROWTH_BYTES
            && self.stderr.written() == 0
    }
}

/// Calls one instance may serve before it is replaced by a fresh one.
const WARM_CALLS: u32 = 1000;

/// An instance whose linear memory grew more than this over what it started
/// with is not kept warm: it would hold that memory while idle. Counted
/// from the starting size, not from zero: a Python or JavaScript runtime
/// starts with 9-12 MiB, and would otherwise never be kept.
const WARM_GROWTH_BYTES: usize = 8 << 20;

/// Bytes of each linear memory slot kept mapped after its instance goes
/// (see `Runtime::new`): a Rust connector's stack, data and a few pages of
/// heap. At most this much stays resident per slot once used.
const KEEP_RESIDENT: usize = 2 << 20;

/// The same for each table slot.
const KEEP_RESIDENT_TABLES: usize = 64 << 10;

/// Core instances one component may hold (componentize-py with
/// `--stub-wasi` needs 38).
const MAX_CORE_INSTANCES: u32 = 64;

/// Tables one component may hold.
const MAX_TABLES: u32 = 64;

/// Tables the pool holds per instance slot; a component with more takes
/// more slots (see [`Runtime::slot_cost`]).
const TABLES_PER_SLOT: u32 = 8;

/// Idle instances kept per connection.
const WARM_PER_CONNECTION: usize = 16;

/// A plugin bound to one connection, ready to call: the connection's HTTP
/// policy (credential, hosts, limits) and the base URL and settings every
/// call is given, with warm instances reused from call to call instead of
/// one instantiated per call. The executor calls it through
/// [`crate::endpoint::Endpoint`].
///
/// # What reuse gives up, and what it keeps
///
/// A fresh instance per call means a call sees nothing of the calls before
/// it. A warm instance keeps its linear memory and globals between calls,
/// so a connector may see what it held during an earlier call (a page's
/// records, its own statics). The pool keeps that inside one connection:
/// an instance is only ever reused for calls with the same credential, the
/// same base URL and allowed hosts, the same settings and the same run (a
/// `PluginConnection` belongs to one run's connection and is dropped with
/// it), so whatever a connector remembers it was already given on this
/// connection, and it still reaches nothing but this connection's HTTP.
/// Every call still starts its own CPU-time, deadline and log budgets, and
/// the memory cap is the same. An instance is discarded after a trap, a
/// limit, a deadline, anything on stderr, memory grown more than 8 MiB over
/// what the instance started with, or 1,000 calls (see `Instance::reusable`), and no more than 16 idle instances
/// are kept per connection, half the instance slots in the process. An idle
/// instance holds a slot: when a call waits for one, idle instances are
/// given up first, and none is kept while any call waits.
pub struct PluginConnection {
    plugin: Arc<Plugin>,
    http: Arc<ConnectionHttp>,
    /// Given to every call: fixed for the connection, so that a warm
    /// instance never serves calls with other settings.
    context: CallContext,
    idle: Arc<IdleList>,
    /// The process's metrics, when it keeps them (`weft serve`).
    metrics: Option<Arc<Metrics>>,
    /// This connection's calls, for the run summary.
    calls: CallStats,
}

/// The ops a connection's calls are counted by, in [`CallStats`].
const COUNTED_OPS: [Op; 5] = [Op::List, Op::Get, Op::Upsert, Op::UpsertBatch, Op::Remove];

/// One connection's plugin calls by op, and their traps by cause.
#[derive(Debug, Default)]
struct CallStats {
    calls: [AtomicU64; COUNTED_OPS.len()],
    micros: [AtomicU64; COUNTED_OPS.len()],
    max_micros: [AtomicU64; COUNTED_OPS.len()],
    traps: [AtomicU64; TrapCause::ALL.len()],
}

impl CallStats {
    fn record(&self, op: &str, took: Duration, trap: Option<TrapCause>) {
        if let Some(at) = COUNTED_OPS.iter().position(|o| o.as_str() == op) {
            let micros = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
            self.calls[at].fetch_add(1, Ordering::Relaxed);
            self.micros[at].fetch_add(micros, Ordering::Relaxed);
            self.max_micros[at].fetch_max(micros, Ordering::Relaxed);
        }
        if let Some(at) = trap.and_then(|t| TrapCause::ALL.iter().position(|c| *c == t)) {
            self.traps[at].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Adds the counts to `totals`' calls and traps.
    fn fill(&self, totals: &mut crate::store::ConnectionTotals) {
        for (at, op) in COUNTED_OPS.iter().enumerate() {
            let calls = self.calls[at].load(Ordering::Relaxed);
            if calls > 0 {
                let call = crate::store::CallTotals {
                    calls,
                    ms: self.micros[at].load(Ordering::Relaxed) / 1000,
                    max_ms: self.max_micros[at].load(Ordering::Relaxed) / 1000,
                };
                totals.calls.insert(op.as_str().to_owned(), call);
            }
        }
        for (at, cause) in TrapCause::ALL.iter().enumerate() {
            let n = self.traps[at].load(Ordering::Relaxed);
            if n > 0 {
                totals.traps.insert(cause.as_str().to_owned(), n);
            }
        }
    }
}

impl std::fmt::Debug for PluginConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginConnection")
            .field("plugin", &self.plugin.name)
            .field("base_url", &self.http.base_url())
            .finish_non_exhaustive()
    }
}

impl Drop for PluginConnection {
    fn drop(&mut self) {
        // Taken out under the lock, so an eviction under way cannot count
        // the same instances again.
        let idle = std::mem::take(
            &mut *self.idle.lock().unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        self.plugin.runtime.inner.warm_idle.fetch_sub(idle.len(), Ordering::Relaxed);
    }
}

impl PluginConnection {
    /// Binds `plugin` to the connection whose HTTP policy is `http`, every
    /// call given `context` (base URL and settings).
    pub fn new(plugin: Arc<Plugin>, http: Arc<ConnectionHttp>, context: CallContext) -> Self {
        let idle = Arc::new(IdleList::default());
        let mut registry = plugin
            .runtime
            .inner
            .idle_lists
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        registry.retain(|list| list.strong_count() > 0);
        registry.push(Arc::downgrade(&idle));
        drop(registry);
        PluginConnection { plugin, http, context, idle, metrics: None, calls: CallStats::default() }
    }

    /// Times this connection's calls, and counts their traps, in `metrics`.
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// The plugin.
    pub fn plugin(&self) -> &Arc<Plugin> {
        &self.plugin
    }

    /// The connection's HTTP policy: base URL, hosts, credential, limiter.
    pub fn http(&self) -> &Arc<ConnectionHttp> {
        &self.http
    }

    /// Base URL and settings handed to every call.
    pub fn context(&self) -> &CallContext {
        &self.context
    }

    /// What this connection did so far: its vendor requests and its
    /// plugin calls.
    pub fn totals(&self) -> crate::store::ConnectionTotals {
        let http = self.http.stats().snapshot();
        let mut totals = crate::store::ConnectionTotals {
            plugin: self.plugin.name.clone(),
            requests: http.requests,
            throttled: http.throttled,
            retries: http.retries,
            waited_ms: http.waited_ms,
            denied: http.denied,
            request_ms: http.request_ms,
            statuses: http.statuses,
            ..Default::default()
        };
        self.calls.fill(&mut totals);
        totals
    }

    /// Reads one page.
    pub async fn list(&self, request: ListRequest) -> Result<Page> {
        self.list_unchecked(request).await?.check()
    }

    /// Reads one page and leaves the check of its records to
    /// [`Listed::check`].
    pub async fn list_unchecked(&self, request: ListRequest) -> Result<Listed> {
        let max = request.page_size as usize;
        self.plugin.listed(self.call(Call::List(self.context.clone(), request)).await?, max)
    }

    /// Reads one record.
    pub async fn get(&self, resource: &str, id: &str) -> Result<Option<String>> {
        let call = Call::Get(self.context.clone(), resource.to_owned(), id.to_owned());
        self.plugin.record("get", self.call(call).await?)
    }

    /// The record an upsert of `record` would update, without writing
    /// (`weft:connector@0.2.0`'s `lookup`); `Ok(None)` when it would create
    /// one. A connector built for 0.1.0 answers
    /// [`ConnectorError::Unsupported`] (see [`Plugin::offers_lookup`]).
    pub async fn lookup(&self, resource: &str, record: &str) -> Result<Option<String>> {
        let call = Call::Lookup(self.context.clone(), resource.to_owned(), record.to_owned());
        self.plugin.record("lookup", self.call(call).await?)
    }

    /// Creates or updates one record.
    pub async fn upsert(&self, request: UpsertRequest) -> Result<UpsertOutcome> {
        self.plugin.upserted(self.call(Call::Upsert(self.context.clone(), request)).await?)
    }

    /// Creates or updates many records.
    pub async fn upsert_batch(
        &self,
        resource: &str,
        items: Vec<BatchItem>,
    ) -> Result<Vec<std::result::Result<UpsertOutcome, ConnectorError>>> {
        let count = items.len();
        self.plugin.batch(
            self.call(Call::UpsertBatch(self.context.clone(), resource.to_owned(), items)).await?,
            count,
        )
    }

    /// Removes one record.
    pub async fn remove(&self, resource: &str, id: &str) -> Result<RemoveOutcome> {
        let call = Call::Remove(self.context.clone(), resource.to_owned(), id.to_owned());
        self.plugin.removed(self.call(call).await?)
    }

    /// Runs `call` on an idle instance of this connection, or a new one,
    /// and keeps the instance for the next call when that is safe.
    async fn call(&self, call: Call) -> Result<Reply> {
        use tracing::Instrument as _;
        let op = call.op();
        let span = tracing::info_span!("plugin call", plugin = %self.plugin.name, op);
        let started = Instant::now();
        let outcome = self.call_untimed(call).instrument(span).await;
        let took = started.elapsed();
        let trap = match &outcome {
            Err(RuntimeError::Trapped { cause, .. }) => Some(*cause),
            _ => None,
        };
        self.calls.record(op, took, trap);
        if let Some(metrics) = &self.metrics {
            metrics.plugin_called(&self.plugin.name, op, took, trap);
        }
        outcome
    }

    async fn call_untimed(&self, call: Call) -> Result<Reply> {
        let op = call.op();
        let inner = &self.plugin.runtime.inner;
        let deadline = deadline_after(self.plugin.runtime.limits().call_timeout);
        let idle = self.idle.lock().unwrap_or_else(std::sync::PoisonError::into_inner).pop();
        let mut instance = match idle {
            Some(instance) => {
                inner.warm_idle.fetch_sub(1, Ordering::Relaxed);
                instance
            }
            None => self.plugin.instantiate(Some(self.http.clone()), op, deadline).await?,
        };
        // Dropping this future mid-call (a cancelled run) drops the
        // instance with it: only a call that ran to its end returns one.
        let outcome = self.plugin.run(&mut instance, call, deadline).await;
        // A call waiting for a slot gets this one instead.
        if instance.reusable(&outcome) && inner.waiting.load(Ordering::Relaxed) == 0 {
            let mut idle = self.idle.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            let admitted = idle.len() < WARM_PER_CONNECTION
                && inner
                    .warm_idle
                    .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                        (n < inner.warm_limit()).then_some(n + 1)
                    })
                    .is_ok();
            if admitted {
                idle.push(instance);
            }
        }
        outcome
    }
}

/// Handles a plugin may hold in host tables at once.
const MAX_HOST_HANDLES: usize = 10_000;

/// Why a store was stopped by the host.
#[derive(Debug, thiserror::Error)]
enum LimitHit {
    #[error("exceeded its CPU time limit of {limit:?}")]
    CpuTime { limit: Duration },
    /// Host code panicked while serving the plugin: a weft bug, which must
    /// cost the call, never the process.
    #[error("the host's `{import}` failed unexpectedly (a weft bug, not the plugin's): {message}")]
    HostPanic { import: &'static str, message: String },
    #[error("exceeded its memory limit of {} (tried to grow to {})", bytes(*cap), bytes(*asked))]
    Memory { cap: usize, asked: usize },
}

/// Runs the host's work for an import; a panic in it becomes an error that
/// traps the calling plugin's call (naming the import) instead of unwinding
/// through wasmtime into the run's task. The plugin's instance is discarded
/// with the trap, so whatever state the panic left is never used again.
async fn guarded<T>(
    import: &'static str,
    work: impl std::future::Future<Output = T>,
) -> wasmtime::Result<T> {
    use futures_util::FutureExt as _;
    std::panic::AssertUnwindSafe(work).catch_unwind().await.map_err(|panic| {
        wasmtime::Error::new(LimitHit::HostPanic { import, message: panic_message(panic.as_ref()) })
    })
}

/// The text of a panic's payload, made safe to print.
fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    let text = panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(no message)");
    plugin_text(text)
}

/// What wasmtime 48 says when a copy out of the instance passes the hostcall
/// fuel (its error type is private, so the text is what there is to match;
/// the version is pinned, and a test fails if the text changes).
const HOSTCALL_FUEL_EXHAUSTED: &str = "fuel allocated for hostcalls has been exhausted";

/// Which limit stopped a call, as [`explain_trap`] tells it.
fn trap_cause(error: &wasmtime::Error, store: &Store<InstanceState>) -> TrapCause {
    match error.downcast_ref::<LimitHit>() {
        Some(LimitHit::CpuTime { .. }) => TrapCause::Cpu,
        Some(LimitHit::HostPanic { .. }) => TrapCause::Panic,
        Some(LimitHit::Memory { .. }) => TrapCause::Memory,
        None if store.data().limiter.asked.is_some() => TrapCause::Memory,
        None => match error.downcast_ref::<Trap>() {
            Some(Trap::UnreachableCodeReached) => TrapCause::Panic,
            _ => TrapCause::Other,
        },
    }
}

fn explain_trap(
    error: &wasmtime::Error,
    store: &Store<InstanceState>,
    stderr: &GuestOutput,
) -> String {
    let mut reason = if let Some(hit) = error.downcast_ref::<LimitHit>() {
        hit.to_string()
    } else if let Some(asked) = store.data().limiter.asked {
        LimitHit::Memory { cap: store.data().limiter.cap, asked }.to_string()
    } else if error.chain().any(|cause| cause.to_string().contains(HOSTCALL_FUEL_EXHAUSTED)) {
        format!(
            "handed the host more than its reply limit of {} in one reply or one import's arguments",
            bytes(store.hostcall_fuel())
        )
    } else {
        match error.downcast_ref::<Trap>() {
            Some(Trap::StackOverflow) => {
                "exceeded the wasm stack limit (unbounded recursion?)".to_owned()
            }
            Some(Trap::UnreachableCodeReached) => {
                "panicked (wasm `unreachable` executed)".to_owned()
            }
            Some(Trap::Interrupt) => "was interrupted".to_owned(),
            Some(trap) => format!("trapped: {trap}"),
            None => error_chain(error),
        }
    };
    // The whole tail, not its last line: a Python traceback or a JS stack
    // ends with boilerplate (`note: run with RUST_BACKTRACE=1`,
    // `Redirecting call to abort()`) after the line that says what broke.
    let (said, cut) = stderr.tail();
    let said = said.trim();
    if !said.is_empty() {
        if cut > 0 {
            reason.push_str(&format!(
                "; the plugin's stderr (its last {}; {cut} bytes before them not kept): ",
                bytes(said.len())
            ));
        } else {
            reason.push_str("; the plugin's stderr: ");
        }
        reason.push_str(&escaped(said));
    }
    reason
}

/// Every message in a wasmtime error chain, outermost first.
fn error_chain(error: &wasmtime::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    for cause in error.chain() {
        let text = cause.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
    }
    parts.join(": ")
}

/// Caps linear memory and remembers a refused growth, so the error can say
/// which limit was hit instead of a bare trap.
struct MemoryCap {
    cap: usize,
    asked: Option<usize>,
    /// The largest size a memory was allowed to grow to.
    peak: usize,
}

impl ResourceLimiter for MemoryCap {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.cap {
            self.asked = Some(desired);
            return Err(wasmtime::Error::new(LimitHit::Memory { cap: self.cap, asked: desired }));
        }
        self.peak = self.peak.max(desired);
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= 100_000)
    }
}

/// The CPU time one call has used: the thread CPU time of each poll of the
/// call's future, summed, plus that of the poll under way.
///
/// A guest runs only inside a poll, on the polling thread (wasmtime resumes
/// its fiber there), and a poll never moves between threads; so the
/// difference of the thread's CPU clock across a poll is the time the call
/// had a core. Time between polls (waiting on HTTP, or queued behind other
/// calls on a busy executor) is not counted, nor is time the OS gave the
/// thread to anything else.
#[derive(Debug, Default)]
struct CpuMeter {
    /// Nanoseconds of finished polls.
    spent: AtomicU64,
    /// The thread CPU clock, in nanoseconds, when the current poll began.
    poll_started: AtomicU64,
}

impl CpuMeter {
    fn reset(&self) {
        self.spent.store(0, Ordering::Relaxed);
    }

    /// CPU time used so far; called on the polling thread (from the epoch
    /// callback), so the poll under way counts up to now.
    fn spent(&self) -> Duration {
        let in_poll = thread_cpu_nanos().saturating_sub(self.poll_started.load(Ordering::Relaxed));
        Duration::from_nanos(self.spent.load(Ordering::Relaxed).saturating_add(in_poll))
    }

    /// `future`, with the CPU time of each of its polls added to the meter.
    async fn metered<F: std::future::Future>(&self, future: F) -> F::Output {
        let mut future = std::pin::pin!(future);
        std::future::poll_fn(|cx| {
            let started = thread_cpu_nanos();
            self.poll_started.store(started, Ordering::Relaxed);
            let poll = future.as_mut().poll(cx);
            self.spent.fetch_add(thread_cpu_nanos().saturating_sub(started), Ordering::Relaxed);
            poll
        })
        .await
    }
}

/// The instant `timeout` from now; a timeout too long to represent (a
/// configured `Duration::MAX`) means a century.
fn deadline_after(timeout: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(timeout)
        .or_else(|| now.checked_add(Duration::from_secs(100 * 365 * 86_400)))
        .unwrap_or(now)
}

/// The calling thread's CPU time, in nanoseconds (0 where the platform has
/// no per-thread CPU clock: then only the call deadline applies).
fn thread_cpu_nanos() -> u64 {
    cpu_time::ThreadTime::try_now()
        .map_or(0, |now| u64::try_from(now.as_duration().as_nanos()).unwrap_or(u64::MAX))
}

/// What one instance may touch: an empty WASI context, its connection's HTTP
/// policy, and its own bookkeeping.
pub(crate) struct InstanceState {
    wasi: WasiCtx,
    table: ResourceTable,
    limiter: MemoryCap,
    http: Option<Arc<ConnectionHttp>>,
    plugin: String,
    /// CPU time the current call has used.
    cpu: Arc<CpuMeter>,
    cpu_limit: Duration,
    /// When the whole call must be over; HTTP retries stop short of it.
    deadline: Instant,
    log_budget: usize,
}

impl WasiView for InstanceState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

impl InstanceState {
    /// Sends a request for the plugin, or refuses when the call has no
    /// connection. The outer error traps the call (see [`guarded`]).
    async fn send(
        &mut self,
        request: crate::http::Request,
    ) -> wasmtime::Result<std::result::Result<crate::http::Response, crate::http::HttpError>> {
        let Some(http) = self.http.clone() else {
            return Ok(Err(crate::http::HttpError::Denied(
                "HTTP is not available during describe".into(),
            )));
        };
        let deadline = self.deadline;
        guarded("http.send", http.send(request, Some(deadline))).await
    }

    /// Records a plugin's log line. The error traps the call (see [`guarded`]).
    fn log(&mut self, level: tracing::Level, message: &str) -> wasmtime::Result<()> {
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            self.write_log(level, message)
        })) {
            Ok(()) => Ok(()),
            Err(panic) => Err(wasmtime::Error::new(LimitHit::HostPanic {
                import: "log",
                message: panic_message(panic.as_ref()),
            })),
        }
    }

    fn write_log(&mut self, level: tracing::Level, message: &str) {
        if self.log_budget == 0 {
            return;
        }
        self.log_budget -= 1;
        let message = plugin_text(message);
        let plugin = self.plugin.as_str();
        match level {
            tracing::Level::ERROR => tracing::error!(plugin, "{message}"),
            tracing::Level::WARN => tracing::warn!(plugin, "{message}"),
            tracing::Level::INFO => tracing::info!(plugin, "{message}"),
            tracing::Level::DEBUG => tracing::debug!(plugin, "{message}"),
            tracing::Level::TRACE => tracing::trace!(plugin, "{message}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_panic_in_the_hosts_work_for_an_import_becomes_an_error_naming_it() {
        let work = async { panic!("header map is full\n2030-01-01 ERROR forged") };
        let error =
            guarded("http.send", work).await.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(error.contains("the host's `http.send` failed unexpectedly"), "{error}");
        assert!(error.contains(r"header map is full\n2030-01-01 ERROR forged"), "escaped: {error}");
        assert_eq!(guarded("http.send", async { 7 }).await.ok(), Some(7));
    }

    #[test]
    fn sizes_in_messages_are_exact() {
        assert_eq!(bytes(64 << 20), "64 MiB");
        assert_eq!(bytes((64 << 20) + (64 << 10)), "67174400 bytes (64.06 MiB)");
        assert_eq!(bytes(64 << 10), "64 KiB");
        assert_eq!(bytes(1000), "1000 bytes");
    }

    #[test]
    fn a_corrupt_cache_entry_is_ignored_not_loaded() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("entry.cwasm");
        write_cached(dir.path(), &path, b"not really native code")?;
        let mut bytes = std::fs::read(&path)?;
        bytes[3] ^= 0xff;
        std::fs::write(&path, &bytes)?;
        let runtime = Runtime::new(RuntimeConfig {
            cache_dir: Some(dir.path().to_path_buf()),
            ..RuntimeConfig::default()
        })?;
        assert!(runtime.read_cached(&path).is_none());
        Ok(())
    }

    #[tokio::test]
    async fn a_cached_component_is_mapped_from_its_file_and_a_damaged_one_recompiled()
    -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let config = || RuntimeConfig {
            cache_dir: Some(dir.path().join("cache")),
            ..RuntimeConfig::default()
        };
        let wasm = crate::builtin::component("growpanel").ok_or("growpanel")?;
        let first = Runtime::new(config())?.load("growpanel", wasm).await?;
        assert!(!first.load_info().cache_hit);
        let entries: Vec<_> = std::fs::read_dir(dir.path().join("cache"))?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "cwasm"))
            .collect();
        let [entry] = entries.as_slice() else { return Err(format!("{entries:?}").into()) };
        // A new engine maps the entry (its checksum trailer and all) and
        // the component works.
        let cached = Runtime::new(config())?.load("growpanel", wasm).await?;
        assert!(cached.load_info().cache_hit, "{:?}", cached.load_info());
        assert_eq!(cached.manifest().name, "growpanel");
        // A byte flipped in the middle of the native code: not loaded,
        // compiled again, and the entry rewritten whole.
        let mut bytes = std::fs::read(entry)?;
        let middle = bytes.len() / 2;
        bytes[middle] ^= 0x5a;
        std::fs::write(entry, &bytes)?;
        let again = Runtime::new(config())?.load("growpanel", wasm).await?;
        assert!(!again.load_info().cache_hit, "a damaged entry was used");
        assert_eq!(again.manifest().name, "growpanel");
        let healed = Runtime::new(config())?.load("growpanel", wasm).await?;
        assert!(healed.load_info().cache_hit);
        Ok(())
    }
}
