//! Our own host layer: the raw proxy-wasm ABI imports, wrapped so that every
//! status comes back as a value, and the module's exports, forwarded to the
//! dispatcher in `mod.rs`. No SDK: its accessors and its dispatcher panic on
//! statuses they do not expect, and a panic traps the worker's VM. Return types
//! are `u32`, so an unknown status from a newer host is not undefined behaviour.
//! The crate's only unsafe code is here.

#![allow(unsafe_code)]

use std::ptr::null_mut;

pub const OK: u32 = 0;
pub const NOT_FOUND: u32 = 1;
pub const EMPTY: u32 = 7;

pub const CAS_MISMATCH: u32 = 8;

pub const BUFFER_REQUEST_BODY: u32 = 0;
pub const BUFFER_RESPONSE_BODY: u32 = 1;
pub const BUFFER_GRPC_RECEIVE: u32 = 5;
pub const BUFFER_PLUGIN_CONFIGURATION: u32 = 7;
pub const MAP_REQUEST_HEADERS: u32 = 0;
pub const MAP_RESPONSE_HEADERS: u32 = 2;

pub const METRIC_COUNTER: u32 = 0;
pub const METRIC_GAUGE: u32 = 1;
pub const METRIC_HISTOGRAM: u32 = 2;

pub const LOG_TRACE: u32 = 0;
pub const LOG_DEBUG: u32 = 1;
pub const LOG_INFO: u32 = 2;
pub const LOG_WARN: u32 = 3;
pub const LOG_ERROR: u32 = 4;
pub const LOG_CRITICAL: u32 = 5;

/// Host calls per kind, for the benchmark's "host calls per request" figure
/// (`--features hostcall-count`, never in a release build). Wasm is single-threaded.
#[cfg(feature = "hostcall-count")]
pub mod count {
    use std::cell::RefCell;

    pub const KINDS: [&str; 16] = [
        "log",
        "time",
        "tick",
        "continue",
        "buffer_get",
        "buffer_set",
        "header_get",
        "header_set",
        "header_remove",
        "header_pairs",
        "property_get",
        "property_set",
        "shared_get",
        "shared_set",
        "metric",
        "other",
    ];
    thread_local! {
        static COUNTS: RefCell<[u64; 16]> = const { RefCell::new([0; 16]) };
        /// Host calls per callback (by the [`Timer`]'s name; `vm` outside any
        /// timed callback) and kind.
        static BY_CALLBACK: RefCell<Vec<(&'static str, [u64; 16])>> =
            const { RefCell::new(Vec::new()) };
        static CALLBACK: std::cell::Cell<&'static str> = const { std::cell::Cell::new("vm") };
    }

    thread_local! {
        /// Nanoseconds spent in host calls (marshalling included), per
        /// callback and kind, as [`BY_CALLBACK`] counts them.
        static NS_BY_CALLBACK: RefCell<Vec<(&'static str, [u64; 16])>> =
            const { RefCell::new(Vec::new()) };
    }

    fn add(table: &RefCell<Vec<(&'static str, [u64; 16])>>, cb: &'static str, kind: usize, v: u64) {
        let mut b = table.borrow_mut();
        match b.iter_mut().find(|e| e.0 == cb) {
            Some(e) => e.1[kind] += v,
            None => {
                let mut row = [0u64; 16];
                row[kind] = v;
                b.push((cb, row));
            }
        }
    }

    /// One host call of `kind`, timed until the guard drops (the end of the
    /// wrapper that made it): counted at once, its time added on drop.
    pub struct Call(usize, u64);

    pub fn bump(kind: usize) -> Call {
        COUNTS.with(|c| c.borrow_mut()[kind] += 1);
        let cb = CALLBACK.with(std::cell::Cell::get);
        BY_CALLBACK.with(|b| add(b, cb, kind, 1));
        Call(kind, raw_now())
    }

    impl Drop for Call {
        fn drop(&mut self) {
            let ns = raw_now().saturating_sub(self.1);
            let cb = CALLBACK.with(std::cell::Cell::get);
            NS_BY_CALLBACK.with(|b| add(b, cb, self.0, ns));
        }
    }

    /// Times `n` calls of each common host call (and of an empty loop), for the
    /// benchmark's per-call costs: (kind, nanoseconds per call).
    pub fn time_calls(n: u32) -> Vec<(&'static str, u64)> {
        let time = || super::now_ns().unwrap_or(0);
        let mut out = Vec::new();
        let mut run = |name: &'static str, f: &mut dyn FnMut(u32)| {
            let t0 = time();
            for i in 0..n {
                f(i);
            }
            out.push((name, time().saturating_sub(t0) / u64::from(n.max(1))));
        };
        run("empty", &mut |i| {
            std::hint::black_box(i);
        });
        run("time", &mut |_| {
            std::hint::black_box(super::now_ns());
        });
        let id =
            super::define_metric(super::METRIC_COUNTER, "llmcap_debug_bench_total").unwrap_or(0);
        run("metric", &mut |_| {
            let _ = super::increment_metric(id, 1);
        });
        run("header_get", &mut |_| {
            std::hint::black_box(super::header(super::MAP_REQUEST_HEADERS, "content-type").ok());
        });
        run("header_pairs", &mut |_| {
            std::hint::black_box(super::header_pairs(super::MAP_REQUEST_HEADERS));
        });
        run("header_set", &mut |_| {
            let _ = super::replace_header(super::MAP_REQUEST_HEADERS, "x-llmcap-bench", "1");
        });
        run("property_get", &mut |_| {
            std::hint::black_box(super::property(&["xds", "route_name"]).ok());
        });
        run("property_set", &mut |_| {
            let _ = super::set_property(&["llmcap_bench"], b"1");
        });
        run("shared_get", &mut |_| {
            std::hint::black_box(super::shared_get("llmcap/bench").ok());
        });
        run("shared_set", &mut |i| {
            let _ = super::shared_set("llmcap/bench", &i.to_le_bytes(), 0);
        });
        out
    }

    thread_local! {
        static SPENT: RefCell<Vec<(&'static str, u64, u64)>> = const { RefCell::new(Vec::new()) };
    }

    /// Times one callback from creation to drop (host calls made in it
    /// included), and attributes the host calls made meanwhile to it.
    pub struct Timer(&'static str, u64, &'static str);

    /// Whether the request asks for [`time_calls`] (`x-llmcap-time-calls`),
    /// read without being counted.
    pub fn requested_timing() -> bool {
        let name = "x-llmcap-time-calls";
        let mut ptr = std::ptr::null_mut();
        let mut size = 0usize;
        // SAFETY: a plain host call; the returned buffer is taken and freed.
        let s = unsafe {
            super::proxy_get_header_map_value(
                super::MAP_REQUEST_HEADERS,
                name.as_ptr(),
                name.len(),
                &mut ptr,
                &mut size,
            )
        };
        drop(unsafe { super::take(ptr, size) });
        s == super::OK
    }

    /// The clock, uncounted (timing must not change the counts).
    fn raw_now() -> u64 {
        let mut t = 0u64;
        // SAFETY: a plain host call writing one u64.
        unsafe { super::proxy_get_current_time_nanoseconds(&mut t) };
        t
    }

    impl Timer {
        pub fn start(name: &'static str) -> Timer {
            let outer = CALLBACK.with(|c| c.replace(name));
            Timer(name, raw_now(), outer)
        }
    }

    impl Drop for Timer {
        fn drop(&mut self) {
            CALLBACK.with(|c| c.set(self.2));
            let ns = raw_now().saturating_sub(self.1);
            SPENT.with(|s| {
                let mut s = s.borrow_mut();
                match s.iter_mut().find(|e| e.0 == self.0) {
                    Some(e) => {
                        e.1 += ns;
                        e.2 += 1;
                    }
                    None => s.push((self.0, ns, 1)),
                }
            });
        }
    }

    /// One gauge, through uncounted calls.
    fn gauge(metric: &str, v: u64) {
        let mut id = 0u32;
        // SAFETY: plain host calls with valid pointers and lengths.
        unsafe {
            if super::proxy_define_metric(
                super::METRIC_GAUGE,
                metric.as_ptr(),
                metric.len(),
                &mut id,
            ) == super::OK
            {
                let _ = super::proxy_record_metric(id, v);
            }
        }
    }

    /// Publishes the totals as gauges `llmcap_debug_hostcalls_<kind>` (through
    /// uncounted calls, so reading them does not change them).
    pub fn export() {
        let spent = SPENT.with(|s| s.borrow().clone());
        for (name, ns, calls) in spent {
            for (suffix, v) in [("ns", ns), ("calls", calls)] {
                gauge(&format!("llmcap_debug_cb_{name}_{suffix}"), v);
            }
        }
        // Calls and nanoseconds per callback and kind: `<prefix>_<callback>__<kind>`.
        for (prefix, table) in [("cbhc", &BY_CALLBACK), ("cbns", &NS_BY_CALLBACK)] {
            for (cb, row) in table.with(|b| b.borrow().clone()) {
                for (kind, n) in KINDS.iter().zip(row).filter(|(_, n)| *n > 0) {
                    gauge(&format!("llmcap_debug_{prefix}_{cb}__{kind}"), n);
                }
            }
        }
        let counts = COUNTS.with(|c| *c.borrow());
        for (kind, n) in KINDS.iter().zip(counts) {
            gauge(&format!("llmcap_debug_hostcalls_{kind}"), n);
        }
    }
}

macro_rules! hc {
    ($kind:literal) => {
        #[cfg(feature = "hostcall-count")]
        let _call = count::bump(match count::KINDS.iter().position(|k| *k == $kind) {
            Some(i) => i,
            None => count::KINDS.len() - 1,
        });
    };
}

#[link(wasm_import_module = "env")]
extern "C" {
    fn proxy_log(level: u32, message_data: *const u8, message_size: usize) -> u32;
    fn proxy_get_current_time_nanoseconds(return_time: *mut u64) -> u32;
    fn proxy_set_tick_period_milliseconds(period: u32) -> u32;
    fn proxy_set_effective_context(context_id: u32) -> u32;
    fn proxy_continue_stream(stream_type: u32) -> u32;
    fn proxy_set_buffer_bytes(
        buffer_type: u32,
        start: usize,
        size: usize,
        buffer_data: *const u8,
        buffer_size: usize,
    ) -> u32;
    fn proxy_replace_header_map_value(
        map_type: u32,
        key_data: *const u8,
        key_size: usize,
        value_data: *const u8,
        value_size: usize,
    ) -> u32;
    fn proxy_get_shared_data(
        key_data: *const u8,
        key_size: usize,
        return_value_data: *mut *mut u8,
        return_value_size: *mut usize,
        return_cas: *mut u32,
    ) -> u32;
    fn proxy_set_shared_data(
        key_data: *const u8,
        key_size: usize,
        value_data: *const u8,
        value_size: usize,
        cas: u32,
    ) -> u32;
    fn proxy_get_buffer_bytes(
        buffer_type: u32,
        start: usize,
        max_size: usize,
        return_buffer_data: *mut *mut u8,
        return_buffer_size: *mut usize,
    ) -> u32;
    fn proxy_get_header_map_value(
        map_type: u32,
        key_data: *const u8,
        key_size: usize,
        return_value_data: *mut *mut u8,
        return_value_size: *mut usize,
    ) -> u32;
    fn proxy_get_property(
        path_data: *const u8,
        path_size: usize,
        return_value_data: *mut *mut u8,
        return_value_size: *mut usize,
    ) -> u32;
    fn proxy_set_property(
        path_data: *const u8,
        path_size: usize,
        value_data: *const u8,
        value_size: usize,
    ) -> u32;
    #[allow(clippy::too_many_arguments)]
    fn proxy_send_local_response(
        status_code: u32,
        status_code_details_data: *const u8,
        status_code_details_size: usize,
        body_data: *const u8,
        body_size: usize,
        headers_data: *const u8,
        headers_size: usize,
        grpc_status: i32,
    ) -> u32;
    fn proxy_define_metric(
        metric_type: u32,
        name_data: *const u8,
        name_size: usize,
        return_id: *mut u32,
    ) -> u32;
    fn proxy_increment_metric(metric_id: u32, offset: i64) -> u32;
    fn proxy_get_header_map_pairs(
        map_type: u32,
        return_map_data: *mut *mut u8,
        return_map_size: *mut usize,
    ) -> u32;
    fn proxy_remove_header_map_value(map_type: u32, key_data: *const u8, key_size: usize) -> u32;
    fn proxy_set_header_map_pairs(map_type: u32, map_data: *const u8, map_size: usize) -> u32;
    fn proxy_call_foreign_function(
        function_name_data: *const u8,
        function_name_size: usize,
        arguments_data: *const u8,
        arguments_size: usize,
        results_data: *mut *mut u8,
        results_size: *mut usize,
    ) -> u32;
    fn proxy_record_metric(metric_id: u32, value: u64) -> u32;
    #[allow(clippy::too_many_arguments)]
    fn proxy_grpc_call(
        upstream_data: *const u8,
        upstream_size: usize,
        service_name_data: *const u8,
        service_name_size: usize,
        method_name_data: *const u8,
        method_name_size: usize,
        initial_metadata_data: *const u8,
        initial_metadata_size: usize,
        request_data: *const u8,
        request_size: usize,
        timeout_milliseconds: u32,
        return_token: *mut u32,
    ) -> u32;
}

/// Takes ownership of a buffer the host allocated through `proxy_on_memory_allocate`
/// (the SDK's allocator, which hands out boxed slices of exactly `size` bytes).
unsafe fn take(ptr: *mut u8, size: usize) -> Option<Vec<u8>> {
    if ptr.is_null() {
        None
    } else {
        Some(Vec::from_raw_parts(ptr, size, size))
    }
}

fn status(s: u32) -> Result<(), u32> {
    if s == OK {
        Ok(())
    } else {
        Err(s)
    }
}

pub fn log(level: u32, message: &str) {
    hc!("log");
    // A failed log call has nowhere to be reported; ignoring it is the only option.
    let _ = unsafe { proxy_log(level, message.as_ptr(), message.len()) };
}

/// Ticks for the current root context (0 stops them).
pub fn set_tick_period(ms: u32) -> Result<(), u32> {
    hc!("tick");
    status(unsafe { proxy_set_tick_period_milliseconds(ms) })
}

/// Makes later calls act on that stream (from the root's tick); fails if it is gone.
pub fn set_effective_context(context_id: u32) -> Result<(), u32> {
    hc!("other");
    status(unsafe { proxy_set_effective_context(context_id) })
}

/// Starts a unary gRPC call to `upstream` (a serialized `GrpcService`); the
/// answer comes to `proxy_on_grpc_receive` or `proxy_on_grpc_close` with the
/// token returned, which our dispatcher routes to the calling context.
pub fn grpc_call(
    upstream: &[u8],
    service: &str,
    method: &str,
    message: &[u8],
    timeout_ms: u32,
) -> Result<u32, u32> {
    hc!("other");
    // No initial metadata: an empty map is a zero count.
    let metadata = 0u32.to_le_bytes();
    let mut token = 0u32;
    status(unsafe {
        proxy_grpc_call(
            upstream.as_ptr(),
            upstream.len(),
            service.as_ptr(),
            service.len(),
            method.as_ptr(),
            method.len(),
            metadata.as_ptr(),
            metadata.len(),
            message.as_ptr(),
            message.len(),
            timeout_ms,
            &mut token,
        )
    })?;
    Ok(token)
}

/// Resumes a paused request (stream type 0 = HTTP request).
pub fn resume_request() -> Result<(), u32> {
    hc!("continue");
    status(unsafe { proxy_continue_stream(0) })
}

pub fn now_ns() -> Option<u64> {
    hc!("time");
    let mut t = 0u64;
    let s = unsafe { proxy_get_current_time_nanoseconds(&mut t) };
    (s == OK).then_some(t)
}

/// Replaces `size` bytes at `start` (0, whole length = the whole buffer).
pub fn set_buffer(buffer_type: u32, start: usize, size: usize, data: &[u8]) -> Result<(), u32> {
    hc!("buffer_set");
    status(unsafe { proxy_set_buffer_bytes(buffer_type, start, size, data.as_ptr(), data.len()) })
}

pub fn replace_header(map_type: u32, name: &str, value: &str) -> Result<(), u32> {
    hc!("header_set");
    status(unsafe {
        proxy_replace_header_map_value(
            map_type,
            name.as_ptr(),
            name.len(),
            value.as_ptr(),
            value.len(),
        )
    })
}

/// Shared data: `Ok(None)` for a key never written.
pub fn shared_get(key: &str) -> Result<Option<(Vec<u8>, u32)>, u32> {
    hc!("shared_get");
    let mut ptr = null_mut();
    let mut size = 0usize;
    let mut cas = 0u32;
    match unsafe { proxy_get_shared_data(key.as_ptr(), key.len(), &mut ptr, &mut size, &mut cas) } {
        OK => Ok(Some((unsafe { take(ptr, size) }.unwrap_or_default(), cas))),
        NOT_FOUND => Ok(None),
        s => Err(s),
    }
}

pub fn shared_set(key: &str, value: &[u8], cas: u32) -> Result<(), u32> {
    hc!("shared_set");
    status(unsafe {
        proxy_set_shared_data(key.as_ptr(), key.len(), value.as_ptr(), value.len(), cas)
    })
}

pub fn buffer(buffer_type: u32, start: usize, max: usize) -> Result<Option<Vec<u8>>, u32> {
    hc!("buffer_get");
    let mut ptr = null_mut();
    let mut size = 0usize;
    match unsafe { proxy_get_buffer_bytes(buffer_type, start, max, &mut ptr, &mut size) } {
        OK => Ok(unsafe { take(ptr, size) }),
        NOT_FOUND | EMPTY => Ok(None),
        s => Err(s),
    }
}

pub fn header(map_type: u32, name: &str) -> Result<Option<Vec<u8>>, u32> {
    hc!("header_get");
    let mut ptr = null_mut();
    let mut size = 0usize;
    match unsafe {
        proxy_get_header_map_value(map_type, name.as_ptr(), name.len(), &mut ptr, &mut size)
    } {
        OK => Ok(unsafe { take(ptr, size) }),
        NOT_FOUND => Ok(None),
        s => Err(s),
    }
}

/// A header as text (lossy UTF-8); `None` when absent or unreadable. Hosts
/// refuse headers only in phases where the map is gone, which is "absent" here.
pub fn header_text(map_type: u32, name: &str) -> Option<String> {
    header(map_type, name).ok().flatten().map(lossy)
}

fn lossy(v: Vec<u8>) -> String {
    String::from_utf8(v).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

fn path_bytes(path: &[&str]) -> Vec<u8> {
    let mut p = Vec::new();
    for seg in path {
        p.extend_from_slice(seg.as_bytes());
        p.push(0);
    }
    p.pop();
    p
}

pub fn property(path: &[&str]) -> Result<Option<Vec<u8>>, u32> {
    hc!("property_get");
    let p = path_bytes(path);
    let mut ptr = null_mut();
    let mut size = 0usize;
    match unsafe { proxy_get_property(p.as_ptr(), p.len(), &mut ptr, &mut size) } {
        OK => Ok(unsafe { take(ptr, size) }),
        NOT_FOUND => Ok(None),
        s => Err(s),
    }
}

pub fn set_property(path: &[&str], value: &[u8]) -> Result<(), u32> {
    hc!("property_set");
    let p = path_bytes(path);
    status(unsafe { proxy_set_property(p.as_ptr(), p.len(), value.as_ptr(), value.len()) })
}

pub fn send_local_response(
    status_code: u32,
    details: &str,
    body: &[u8],
    headers: &[u8],
) -> Result<(), u32> {
    hc!("other");
    status(unsafe {
        proxy_send_local_response(
            status_code,
            details.as_ptr(),
            details.len(),
            body.as_ptr(),
            body.len(),
            headers.as_ptr(),
            headers.len(),
            -1,
        )
    })
}

pub fn define_metric(metric_type: u32, name: &str) -> Result<u32, u32> {
    hc!("metric");
    let mut id = 0u32;
    status(unsafe { proxy_define_metric(metric_type, name.as_ptr(), name.len(), &mut id) })?;
    Ok(id)
}

pub fn increment_metric(id: u32, offset: i64) -> Result<(), u32> {
    hc!("metric");
    status(unsafe { proxy_increment_metric(id, offset) })
}

pub fn record_metric(id: u32, value: u64) -> Result<(), u32> {
    hc!("metric");
    status(unsafe { proxy_record_metric(id, value) })
}

pub fn remove_header(map_type: u32, name: &str) -> Result<(), u32> {
    hc!("header_remove");
    status(unsafe { proxy_remove_header_map_value(map_type, name.as_ptr(), name.len()) })
}

/// Every header of a map as (lowercase name, lossy UTF-8 value); empty when the
/// map is unavailable.
pub fn header_pairs(map_type: u32) -> Vec<(String, String)> {
    header_pairs_raw(map_type)
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (lossy(k), lossy(v)))
        .collect()
}

/// Every header of a map, bytes as the host holds them; `None` when the map is
/// unavailable (or its encoding malformed).
pub fn header_pairs_raw(map_type: u32) -> Option<Vec<(Vec<u8>, Vec<u8>)>> {
    hc!("header_pairs");
    let mut ptr = null_mut();
    let mut size = 0usize;
    let bytes = match unsafe { proxy_get_header_map_pairs(map_type, &mut ptr, &mut size) } {
        OK => unsafe { take(ptr, size) }.unwrap_or_default(),
        _ => return None,
    };
    decode_pairs(&bytes)
}

/// Replaces a whole map with `pairs` (Envoy removes every header, then adds
/// these in order).
pub fn set_header_pairs(map_type: u32, pairs: &[(Vec<u8>, Vec<u8>)]) -> Result<(), u32> {
    hc!("header_set");
    let mut out = Vec::with_capacity(
        4 + pairs
            .iter()
            .map(|(k, v)| 10 + k.len() + v.len())
            .sum::<usize>(),
    );
    out.extend_from_slice(&(pairs.len() as u32).to_le_bytes());
    for (k, v) in pairs {
        out.extend_from_slice(&(k.len() as u32).to_le_bytes());
        out.extend_from_slice(&(v.len() as u32).to_le_bytes());
    }
    for (k, v) in pairs {
        out.extend_from_slice(k);
        out.push(0);
        out.extend_from_slice(v);
        out.push(0);
    }
    status(unsafe { proxy_set_header_map_pairs(map_type, out.as_ptr(), out.len()) })
}

/// The ABI's pair encoding: u32 count, count x (u32 name size, u32 value size),
/// then each name and value NUL-terminated. `None` if malformed.
fn decode_pairs(b: &[u8]) -> Option<Vec<(Vec<u8>, Vec<u8>)>> {
    let u32_at = |i: usize| -> Option<usize> {
        let s = b.get(i..i + 4)?;
        Some(u32::from_le_bytes([s[0], s[1], s[2], s[3]]) as usize)
    };
    if b.is_empty() {
        return Some(Vec::new()); // an empty map may come back as no bytes
    }
    let n = u32_at(0)?;
    let mut sizes = Vec::with_capacity(n.min(1024));
    for i in 0..n {
        sizes.push((u32_at(4 + i * 8)?, u32_at(8 + i * 8)?));
    }
    let mut at = 4 + n * 8;
    let mut out = Vec::with_capacity(sizes.len());
    for (k, v) in sizes {
        let key = b.get(at..at + k)?;
        at += k + 1;
        let val = b.get(at..at + v)?;
        at += v + 1;
        out.push((key.to_vec(), val.to_vec()));
    }
    Some(out)
}

/// Envoy's `clear_route_cache` foreign function: the route (and its cluster)
/// is resolved again, seeing headers and filter state set since.
pub fn clear_route_cache() -> Result<(), u32> {
    hc!("other");
    let name = "clear_route_cache";
    let mut ptr = null_mut();
    let mut size = 0usize;
    let s = unsafe {
        proxy_call_foreign_function(
            name.as_ptr(),
            name.len(),
            null_mut::<u8>() as *const u8,
            0,
            &mut ptr,
            &mut size,
        )
    };
    // Free whatever result the host handed over.
    drop(unsafe { take(ptr, size) });
    status(s)
}

// ------------------------------------------------------------------ exports
//
// The module's side of the ABI (proxy-wasm 0.2.1): each export forwards to the
// dispatcher in `filter/mod.rs`. Flags arrive as i32 and are read as `!= 0`.

#[cfg(target_os = "wasi")]
extern "C" {
    fn __wasm_call_ctors();
}

/// The reactor's entry point: runs static constructors, then sets up logging.
#[no_mangle]
pub extern "C" fn _initialize() {
    // SAFETY: called once by the host before any other export, as WASI reactors require.
    #[cfg(target_os = "wasi")]
    unsafe {
        __wasm_call_ctors();
    }
    super::init();
}

#[no_mangle]
pub extern "C" fn proxy_abi_version_0_2_1() {}

/// Buffers the host hands over; [`take`] turns them back into a `Vec`.
#[no_mangle]
pub extern "C" fn proxy_on_memory_allocate(size: usize) -> *mut u8 {
    let v: Box<[u8]> = vec![0u8; size].into_boxed_slice();
    Box::into_raw(v) as *mut u8
}

#[no_mangle]
pub extern "C" fn proxy_on_context_create(context_id: u32, root_context_id: u32) {
    super::on_context_create(context_id, root_context_id);
}

#[no_mangle]
pub extern "C" fn proxy_on_vm_start(context_id: u32, size: usize) -> u32 {
    u32::from(super::on_vm_start(context_id, size))
}

#[no_mangle]
pub extern "C" fn proxy_on_configure(context_id: u32, size: usize) -> u32 {
    u32::from(super::on_configure(context_id, size))
}

#[no_mangle]
pub extern "C" fn proxy_on_tick(context_id: u32) {
    super::on_tick(context_id);
}

#[no_mangle]
pub extern "C" fn proxy_on_request_headers(context_id: u32, headers: usize, eos: u32) -> u32 {
    super::on_request_headers(context_id, headers, eos != 0)
}

#[no_mangle]
pub extern "C" fn proxy_on_request_body(context_id: u32, size: usize, eos: u32) -> u32 {
    super::on_request_body(context_id, size, eos != 0)
}

#[no_mangle]
pub extern "C" fn proxy_on_response_headers(context_id: u32, headers: usize, eos: u32) -> u32 {
    super::on_response_headers(context_id, headers, eos != 0)
}

#[no_mangle]
pub extern "C" fn proxy_on_response_body(context_id: u32, size: usize, eos: u32) -> u32 {
    super::on_response_body(context_id, size, eos != 0)
}

#[no_mangle]
pub extern "C" fn proxy_on_log(context_id: u32) {
    super::on_log(context_id);
}

#[no_mangle]
pub extern "C" fn proxy_on_done(context_id: u32) -> u32 {
    u32::from(super::on_done(context_id))
}

#[no_mangle]
pub extern "C" fn proxy_on_delete(context_id: u32) {
    super::on_delete(context_id);
}

#[no_mangle]
pub extern "C" fn proxy_on_grpc_receive(context_id: u32, token: u32, size: usize) {
    super::on_grpc_answer(context_id, token, 0, size);
}

#[no_mangle]
pub extern "C" fn proxy_on_grpc_close(context_id: u32, token: u32, status_code: u32) {
    super::on_grpc_answer(context_id, token, status_code, 0);
}
