// Device specs: what the cost model knows about one kind of device and the links between
// devices. Built in: "a100-80gb-sxm" and "h100-80gb-sxm" (vendor datasheets, nodes of 8 GPUs
// on NVLink/NVSwitch with one InfiniBand port per GPU) and "cpu" (this machine, as measured by
// `loom bench devices`); any other device is a JSON file (docs/devices.md).
//
//     loom_device_spec s;
//     loom_device_spec_get("h100-80gb-sxm", &s);     // or a path to a JSON file
//     double matmul_s = flops / loom_device_spec_matmul_rate(&s, LOOM_DTYPE_BF16);
//     double allreduce_s = bytes / s.intra_node.bandwidth * 2 * (n - 1) / n
//                          + 2 * (n - 1) * s.intra_node.latency;
//
// Units are SI base units throughout: FLOP/s, bytes, bytes/s, seconds. A link's bandwidth is
// B_w of the collective model (docs/devices.md): bytes per second that one device sends (and,
// at the same time, receives) over it, one direction; vendors often quote the sum of both
// directions (NVLink's "600 GB/s" is 300 GB/s each way).

#ifndef LOOM_DEVICE_H
#define LOOM_DEVICE_H

#include "loom/dtype.h"
#include "loom/status.h"

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

// Append-only: new kinds go before LOOM_DEVICE_KIND_COUNT.
typedef enum loom_device_kind {
    LOOM_DEVICE_CPU = 0,
    LOOM_DEVICE_GPU,
    LOOM_DEVICE_KIND_COUNT
} loom_device_kind;

// "cpu", "gpu" (NULL for an out-of-range kind).
const char *loom_device_kind_name(loom_device_kind kind);

// A link between devices, as the collective model sees it: a step that moves S bytes takes
// latency + S / bandwidth.
typedef struct loom_device_link {
    double bandwidth;  // bytes/s per device, one direction; 0: no such link
    double latency;    // seconds per step (alpha)
} loom_device_link;

#define LOOM_DEVICE_NAME_MAX 64     // bytes of name, with the terminating NUL
#define LOOM_DEVICE_TEXT_MAX 1024   // bytes of source and notes, with the terminating NUL

// One device (a GPU, or for "cpu" one core of this machine) and the node it sits in. A plain
// value: copy it freely. Rates of 0 mean "not supported" / "no such link".
typedef struct loom_device_spec {
    char name[LOOM_DEVICE_NAME_MAX];  // "h100-80gb-sxm"
    loom_device_kind kind;
    // Peak dense matrix-multiply FLOP/s of one device (2 FLOPs per multiply-add), by the
    // precision of the inputs. f32 is required; tf32 (fp32 inputs on tensor cores), bf16 and
    // f16 are 0 where the device (or loom's backend for it) does not run them.
    double peak_flops_f32;
    double peak_flops_tf32;
    double peak_flops_bf16;
    double peak_flops_f16;
    // The fraction of peak that a large, well-shaped matmul reaches, in (0, 1]. 1 when the
    // peaks are themselves measured rates (the "cpu" spec).
    double matmul_efficiency;
    uint64_t memory_bytes;       // memory one device may use
    double memory_bandwidth;     // bytes/s of that memory, per device
    int devices_per_node;        // devices joined by the intra-node link
    loom_device_link intra_node; // between devices of one node; required when
                                 // devices_per_node > 1
    loom_device_link inter_node; // between nodes, per device; {0, 0}: unknown (one node only)
    char source[LOOM_DEVICE_TEXT_MAX];  // where the numbers come from ("" if not given)
    char notes[LOOM_DEVICE_TEXT_MAX];   // anything else worth knowing ("" if not given)
} loom_device_spec;

// ---- built-in specs -----------------------------------------------------------------------------

// Name of built-in spec i (0, 1, ...): "a100-80gb-sxm", "h100-80gb-sxm", "cpu"; NULL past the end.
const char *loom_device_spec_builtin_name(int i);
// The built-in spec `name`. The GPU specs are compiled in; "cpu" reads this machine's cached
// measurement (loom_device_spec_cache_path("cpu")) and fails with LOOM_ERR_NOT_FOUND and a
// message saying to run `loom bench devices` when there is none yet. Errors: LOOM_ERR_NOT_FOUND
// for an unknown name (the message lists the built-ins), the errors of loom_device_spec_load.
loom_status loom_device_spec_builtin(const char *name, loom_device_spec *out);
// A built-in name, or else the path of a JSON spec file.
loom_status loom_device_spec_get(const char *name_or_path, loom_device_spec *out);

// ---- files --------------------------------------------------------------------------------------

// Read a JSON spec (docs/devices.md). Unknown fields, missing required fields, values of the
// wrong type, rates <= 0 and implausible magnitudes (a bandwidth of 300 meant as GB/s) are
// LOOM_ERR_FORMAT with a message naming the file, the field and the fix; a missing or unreadable
// file is LOOM_ERR_NOT_FOUND / LOOM_ERR_IO. *out is zeroed on error.
loom_status loom_device_spec_load(const char *path, loom_device_spec *out);
// The same from `len` bytes of JSON text; `source_name` (NULL: "<string>") stands for the file
// in messages.
loom_status loom_device_spec_parse(const char *text, size_t len, const char *source_name,
                                   loom_device_spec *out);
// Write `spec` as JSON to `path` atomically (temp file, fsync, rename); the directory must
// exist. The spec is validated first (LOOM_ERR_INVALID naming the field). Numbers are written
// exactly, so loading the file gives back an equal spec.
loom_status loom_device_spec_save(const char *path, const loom_device_spec *spec);
// Check a spec filled in by hand: LOOM_ERR_INVALID naming the first bad field and the fix.
loom_status loom_device_spec_validate(const loom_device_spec *spec);
// Where the measured spec `name` ("cpu") is cached: $XDG_CACHE_HOME/loom/devices/NAME.json, or
// $HOME/.cache/loom/devices/NAME.json when XDG_CACHE_HOME is unset or not absolute.
// LOOM_ERR_NOT_FOUND when neither variable is set, LOOM_ERR_INVALID when `cap` is too small.
loom_status loom_device_spec_cache_path(const char *name, char *buf, size_t cap);

// ---- the collective model -----------------------------------------------------------------------

typedef enum loom_collective {
    LOOM_COLLECTIVE_ALL_REDUCE = 0,
    LOOM_COLLECTIVE_REDUCE_SCATTER,
    LOOM_COLLECTIVE_ALL_GATHER,
    LOOM_COLLECTIVE_ALL_TO_ALL,
    LOOM_COLLECTIVE_BROADCAST,
    LOOM_COLLECTIVE_SEND_RECV,
    LOOM_COLLECTIVE_COUNT
} loom_collective;

// A collective of `bytes` (the whole vector: all-reduce's buffer, all-gather's output) among
// `ranks` ranks on `link`: steps x latency + volume x bytes / bandwidth, with the ring's steps
// and volume per rank (docs/devices.md). 0 for one rank; a huge value for a missing link.
double loom_collective_seconds(const loom_device_link *link, loom_collective kind, double bytes,
                               int ranks);
// The same on a device's links: the intra-node link when the ranks fit in one node
// (ranks <= devices_per_node, consecutive devices), else the inter-node link, which a ring
// across nodes waits for.
double loom_device_collective_seconds(const loom_device_spec *spec, loom_collective kind,
                                      double bytes, int ranks);
// The ring's steps (latency terms) and volume (bytes moved per rank, as a fraction of `bytes`).
void loom_collective_ring(loom_collective kind, int ranks, double *steps, double *volume);

// peak FLOP/s for `dtype` inputs times matmul_efficiency; 0 when the device does not run it.
// LOOM_DTYPE_F32 is plain fp32 (not tf32).
double loom_device_spec_matmul_rate(const loom_device_spec *spec, loom_dtype dtype);

// ---- measuring this machine (`loom bench devices`) ----------------------------------------------

typedef struct loom_device_measure_config {
    int quick;          // small sizes and few repetitions (about a second); for tests
    int threads;        // cores to use for "all threads" (0: every online core)
    // Called with one line of progress text per finished measurement (no newline); NULL: quiet.
    void (*progress)(const char *line, void *user);
    void *user;
} loom_device_measure_config;

loom_device_measure_config loom_device_measure_config_default(void);

// SGEMM (C = A B, square n, fp32, OpenBLAS) rates: best of a few runs.
typedef struct loom_device_sgemm_result {
    int n;
    double flops_one;   // FLOP/s with one thread
    double flops_all;   // FLOP/s with every thread
} loom_device_sgemm_result;

// Collectives of the `local` communicator (ranks are threads), F32: seconds per call at a small
// and a large size (bytes of the full vector: the all-reduce's input, the all-gather's output),
// and the latency and bandwidth of the collective model fitted to them.
typedef struct loom_device_comm_result {
    int ranks;
    size_t small_bytes, large_bytes;
    double all_reduce_small_s, all_reduce_large_s;
    double all_gather_small_s, all_gather_large_s;
    loom_device_link all_reduce;  // from t = 2(n-1) alpha + 2(n-1)/n S / B
    loom_device_link all_gather;  // from t = (n-1) alpha + (n-1)/n S / B
} loom_device_comm_result;

#define LOOM_DEVICE_MAX_SGEMM 4
#define LOOM_DEVICE_MAX_COMM 2

// Everything loom_device_measure measured, for display.
typedef struct loom_device_measurement {
    int cores;                  // online cores (the spec's devices_per_node)
    int threads;                // threads used for the "all" rates
    char cpu_model[128];        // from /proc/cpuinfo ("" when unknown)
    uint64_t ram_bytes;         // physical memory of the machine
    int n_sgemm;
    loom_device_sgemm_result sgemm[LOOM_DEVICE_MAX_SGEMM];
    size_t triad_bytes;         // bytes one triad pass moves (3 arrays)
    double triad_one;           // bytes/s, one thread
    double triad_all;           // bytes/s, every thread together
    int n_comm;
    loom_device_comm_result comm[LOOM_DEVICE_MAX_COMM];  // 2 ranks, then one per core if > 2
    double seconds;             // wall time of the whole measurement
} loom_device_measurement;

// Measure this machine and describe one core of it as a device: peak_flops_f32 is the best
// one-thread SGEMM rate (matmul_efficiency 1), memory a core's share of the RAM and of the
// all-thread triad bandwidth, devices_per_node the core count, intra_node the all-reduce fit of
// the `local` communicator with the most ranks measured; no inter-node link, no bf16/f16 (the
// CPU backend computes in fp32). `m` may be NULL. Uses OpenMP and OpenBLAS thread counts while
// it runs and restores them after.
loom_status loom_device_measure(const loom_device_measure_config *cfg, loom_device_spec *spec,
                                loom_device_measurement *m);

#ifdef __cplusplus
}
#endif
#endif // LOOM_DEVICE_H
