// Device specs: the built-in GPU nodes (datasheet numbers, each cited where it is written),
// the cached measurement of this machine, and the JSON file format with its checks.

#include "loom/device.h"

#include "core/core.h"
#include "io/fileio.h"

#include <jansson.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define SPEC_VERSION 1

const char *loom_device_kind_name(loom_device_kind kind) {
    switch (kind) {
    case LOOM_DEVICE_CPU: return "cpu";
    case LOOM_DEVICE_GPU: return "gpu";
    default: return NULL;
    }
}

// ---- built-in specs -----------------------------------------------------------------------------
//
// The numbers below are copied from vendor documents; tests/test-devices.c asserts each of them,
// as a guard against accidental edits. Sources:
//  [A100-DS]  NVIDIA A100 Tensor Core GPU datasheet (nvidia-a100-datasheet-us-nvidia-1758950-r4),
//             table for "A100 80GB SXM"; the same values are in the Ampere architecture whitepaper.
//             https://www.nvidia.com/content/dam/en-zz/Solutions/Data-Center/a100/pdf/nvidia-a100-datasheet-us-nvidia-1758950-r4-web.pdf
//             (tabulated at https://glennklockwood.com/garden/processors/A100)
//  [HGX-A100] NVIDIA developer blog, "Introducing NVIDIA HGX A100": 8 GPUs on 6 NVSwitches;
//             the topology "enables any A100 GPU to talk to any other A100 GPU at a full NVLink
//             bi-directional speed of 600 GB/s".
//             https://developer.nvidia.com/blog/introducing-hgx-a100-most-powerful-accelerated-server-platform-for-ai-hpc/
//  [DGX-A100] DGX A100 (NVIDIA's announcement, https://developer.nvidia.com/blog/defining-ai-innovation-with-dgx-a100/):
//             eight Mellanox ConnectX-6 HDR InfiniBand adapters at 200 Gb/s, one per GPU, for
//             the compute fabric. The text checked here was the press report of it (geektopia.es,
//             2020-05-14: "ocho tarjetas de red de Mellanox ... 200 Gb/s") and the HGX A100
//             8-GPU server layout with one GPU-dedicated NIC per GPU.
//  [H100-DS]  NVIDIA H100 Tensor Core GPU datasheet, "H100 SXM" column: FP32 67 TFLOPS,
//             TF32 989 / BF16 1,979 / FP16 1,979 TFLOPS "shown with sparsity; specifications
//             1/2 lower without sparsity", 80 GB HBM3 at 3,350 GB/s, NVLink 900 GB/s; the table
//             as reproduced at https://archive-lib.hpctech.co.jp/gpuproduct/nvidia-h100.html.
//             Dense values with one more digit from the Hopper architecture whitepaper (FP32
//             66.9, TF32 494.7, BF16/FP16 989.4), as tabulated at
//             https://glennklockwood.com/garden/processors/h100
//  [HOPPER]   NVIDIA's Hopper architecture page (https://www.nvidia.com/de-de/technologies/hopper-architecture/,
//             German edition): fourth-generation NVLink gives 900 GB/s bidirectional per GPU in
//             DGX and HGX H100 servers.
//  [DGX-H100] NVIDIA DGX BasePOD reference architecture, core components: DGX H100 has "four
//             OSFP ports serving eight single-port NVIDIA ConnectX-7 VPI, ... up to 400 Gb/s
//             InfiniBand/Ethernet" (NDR), one per GPU. https://docs.nvidia.com/dgx-basepod/reference-architecture-infrastructure-foundation-enterprise-ai/latest/core-components.html
//
// Assumptions (not from datasheets; change them with a JSON file when you know better):
//  - matmul_efficiency: cuBLAS reaches roughly 80% of peak on large bf16 GEMMs on A100 and
//    roughly 70% on H100 SXM (its peak assumes boost clocks that power limits cut).
//  - latencies: alpha per collective step, including the NCCL kernel's share: NVLink/NVSwitch
//    about 3 us; InfiniBand HDR/NDR through one switch level about 5 us (NIC and switch add
//    ~1-2 us, the rest is the software path).
//  - memory_bytes: "80GB" read as 80 GiB, the nominal size (nvidia-smi shows a little less on
//    H100); the driver and the CUDA context take some of it, so plan with headroom.

static const uint64_t GIB = (uint64_t)1 << 30;

static void builtin_a100(loom_device_spec *s) {
    *s = (loom_device_spec){.kind = LOOM_DEVICE_GPU};
    snprintf(s->name, sizeof s->name, "a100-80gb-sxm");
    s->peak_flops_f32 = 19.5e12;          // [A100-DS] FP32 19.5 TFLOPS
    s->peak_flops_tf32 = 156e12;          // [A100-DS] TF32 Tensor Core 156 TFLOPS (312 sparse)
    s->peak_flops_bf16 = 312e12;          // [A100-DS] BFLOAT16 Tensor Core 312 TFLOPS (624 sparse)
    s->peak_flops_f16 = 312e12;           // [A100-DS] FP16 Tensor Core 312 TFLOPS (624 sparse)
    s->matmul_efficiency = 0.8;           // assumption, see above
    s->memory_bytes = 80 * GIB;           // [A100-DS] 80GB HBM2e
    s->memory_bandwidth = 2039e9;         // [A100-DS] 2,039 GB/s
    s->devices_per_node = 8;              // [HGX-A100] 8 GPUs on NVSwitch (DGX/HGX A100)
    s->intra_node.bandwidth = 600e9 / 2;  // [HGX-A100] 600 GB/s both directions: 300 each way
    s->intra_node.latency = 3e-6;         // assumption, see above
    s->inter_node.bandwidth = 200e9 / 8;  // [DGX-A100] one HDR 200 Gb/s port per GPU: 25 GB/s
    s->inter_node.latency = 5e-6;         // assumption, see above
    snprintf(s->source, sizeof s->source,
             "NVIDIA A100 datasheet (A100 80GB SXM); HGX A100 and DGX A100 (NVLink 600 GB/s "
             "bidirectional per GPU, one 200 Gb/s HDR InfiniBand port per GPU); latencies and "
             "matmul efficiency assumed");
    snprintf(s->notes, sizeof s->notes,
             "nodes of 8 GPUs on NVLink 3 / NVSwitch; bandwidths are per GPU, one direction");
}

static void builtin_h100(loom_device_spec *s) {
    *s = (loom_device_spec){.kind = LOOM_DEVICE_GPU};
    snprintf(s->name, sizeof s->name, "h100-80gb-sxm");
    s->peak_flops_f32 = 66.9e12;          // [H100-DS] FP32 67 TFLOPS (whitepaper 66.9)
    s->peak_flops_tf32 = 494.7e12;        // [H100-DS] TF32 989 TFLOPS sparse, dense 494.7
    s->peak_flops_bf16 = 989.4e12;        // [H100-DS] BF16 1,979 TFLOPS sparse, dense 989.4
    s->peak_flops_f16 = 989.4e12;         // [H100-DS] FP16 1,979 TFLOPS sparse, dense 989.4
    s->matmul_efficiency = 0.7;           // assumption, see above
    s->memory_bytes = 80 * GIB;           // [H100-DS] 80GB HBM3
    s->memory_bandwidth = 3350e9;         // [H100-DS] 3.35 TB/s
    s->devices_per_node = 8;              // [DGX-H100] eight Hopper GPUs, four NVSwitches
    s->intra_node.bandwidth = 900e9 / 2;  // [HOPPER] 900 GB/s bidirectional: 450 each way
    s->intra_node.latency = 3e-6;         // assumption, see above
    s->inter_node.bandwidth = 400e9 / 8;  // [DGX-H100] one NDR 400 Gb/s port per GPU: 50 GB/s
    s->inter_node.latency = 5e-6;         // assumption, see above
    snprintf(s->source, sizeof s->source,
             "NVIDIA H100 datasheet (H100 SXM) and Hopper whitepaper; DGX H100 (NVLink 900 GB/s "
             "bidirectional per GPU, one 400 Gb/s NDR InfiniBand port per GPU); latencies and "
             "matmul efficiency assumed");
    snprintf(s->notes, sizeof s->notes,
             "nodes of 8 GPUs on NVLink 4 / NVSwitch; bandwidths are per GPU, one direction");
}

static const char *const builtin_names[] = {"a100-80gb-sxm", "h100-80gb-sxm", "cpu"};
enum { N_BUILTIN = sizeof builtin_names / sizeof builtin_names[0] };

const char *loom_device_spec_builtin_name(int i) {
    return i >= 0 && i < N_BUILTIN ? builtin_names[i] : NULL;
}

static const char *builtin_list(void) { return "a100-80gb-sxm, h100-80gb-sxm, cpu"; }

static int is_builtin(const char *name) {
    for (int i = 0; i < N_BUILTIN; i++)
        if (!strcmp(name, builtin_names[i])) return 1;
    return 0;
}

loom_status loom_device_spec_builtin(const char *name, loom_device_spec *out) {
    if (!out) return loom__error(LOOM_ERR_INVALID, "loom_device_spec_builtin: out is NULL");
    memset(out, 0, sizeof *out);
    if (!name) return loom__error(LOOM_ERR_INVALID, "loom_device_spec_builtin: name is NULL");
    if (!strcmp(name, "a100-80gb-sxm")) {
        builtin_a100(out);
        return LOOM_OK;
    }
    if (!strcmp(name, "h100-80gb-sxm")) {
        builtin_h100(out);
        return LOOM_OK;
    }
    if (!strcmp(name, "cpu")) {
        char path[4096];
        LOOM_CHECK(loom_device_spec_cache_path("cpu", path, sizeof path));
        if (!loom__is_regular_file(path))
            return loom__error(LOOM_ERR_NOT_FOUND, "device 'cpu': this machine has not been "
                               "measured yet (no %s): run 'loom bench devices' (under a "
                               "minute) to measure it", path);
        loom_status st = loom_device_spec_load(path, out);
        if (st < 0) {
            loom__error_prefix("device 'cpu' (run 'loom bench devices' to measure it again)");
            return st;
        }
        return LOOM_OK;
    }
    return loom__error(LOOM_ERR_NOT_FOUND, "unknown device '%s': the built-in devices are %s; "
                       "describe any other in a JSON file (docs/devices.md)", name,
                       builtin_list());
}

loom_status loom_device_spec_get(const char *name_or_path, loom_device_spec *out) {
    if (!out) return loom__error(LOOM_ERR_INVALID, "loom_device_spec_get: out is NULL");
    memset(out, 0, sizeof *out);
    if (!name_or_path) return loom__error(LOOM_ERR_INVALID, "loom_device_spec_get: name is NULL");
    if (is_builtin(name_or_path)) return loom_device_spec_builtin(name_or_path, out);
    if (loom__is_regular_file(name_or_path)) return loom_device_spec_load(name_or_path, out);
    return loom__error(LOOM_ERR_NOT_FOUND, "device '%s' is neither a built-in device (%s) nor "
                       "a spec file", name_or_path, builtin_list());
}

loom_status loom_device_spec_cache_path(const char *name, char *buf, size_t cap) {
    if (!name || !*name || strchr(name, '/') || !buf)
        return loom__error(LOOM_ERR_INVALID, "loom_device_spec_cache_path: a plain device name "
                           "and a buffer are required");
    const char *xdg = getenv("XDG_CACHE_HOME"), *home = getenv("HOME");
    int n;
    if (xdg && xdg[0] == '/') {
        n = snprintf(buf, cap, "%s/loom/devices/%s.json", xdg, name);
    } else if (home && *home) {
        n = snprintf(buf, cap, "%s/.cache/loom/devices/%s.json", home, name);
    } else {
        return loom__error(LOOM_ERR_NOT_FOUND, "no cache directory for device specs: set "
                           "XDG_CACHE_HOME or HOME (or give a spec file path)");
    }
    if (n < 0 || (size_t)n >= cap)
        return loom__error(LOOM_ERR_INVALID, "the device cache path is longer than %zu bytes", cap);
    return LOOM_OK;
}

double loom_device_spec_matmul_rate(const loom_device_spec *s, loom_dtype dtype) {
    if (!s) return 0;
    double peak = dtype == LOOM_DTYPE_F32    ? s->peak_flops_f32
                  : dtype == LOOM_DTYPE_BF16 ? s->peak_flops_bf16
                  : dtype == LOOM_DTYPE_F16  ? s->peak_flops_f16
                                             : 0;
    return peak * s->matmul_efficiency;
}

// ---- checks -------------------------------------------------------------------------------------

// Fields in file order, with what each holds (used in messages).
static const char *const known_fields =
    "version, name, kind, peak_flops_f32, peak_flops_tf32, peak_flops_bf16, peak_flops_f16, "
    "matmul_efficiency, memory_bytes, memory_bandwidth, devices_per_node, intra_node, "
    "inter_node, source, notes";
static const char *const known_link_fields = "bandwidth, latency";

// Bounds that catch values written in the wrong unit (300 meant as GB/s) and typos.
#define MIN_FLOPS 1e6           // 1 MFLOP/s
#define MAX_FLOPS 1e18          // 1 EFLOP/s per device
#define MIN_BANDWIDTH 1e6       // 1 MB/s
#define MAX_BANDWIDTH 1e15      // 1 PB/s
#define MIN_MEMORY ((uint64_t)1 << 20)
#define MAX_LATENCY 1.0         // seconds

// How an optional rate may be 0: RATE_REQUIRED never; RATE_OPTIONAL means "not supported" in
// a struct; RATE_GIVEN is a rate written in a file, where leaving the field out says that.
enum { RATE_REQUIRED, RATE_OPTIONAL, RATE_GIVEN };

static loom_status check_flops(const char *where, loom_status code, const char *field, double v,
                               int mode) {
    if (mode == RATE_OPTIONAL && v == 0) return LOOM_OK;
    if (!isfinite(v) || v <= 0)
        return loom__error(code, "%s: field '%s': %g is not a positive rate; give the device's "
                           "peak in FLOP/s (312e12 for 312 TFLOP/s)%s", where, field, v,
                           mode == RATE_REQUIRED ? "" : ", or leave the field out if the device "
                           "does not run this precision");
    if (v < MIN_FLOPS || v > MAX_FLOPS)
        return loom__error(code, "%s: field '%s': %g FLOP/s is implausible (expected %g to %g): "
                           "the unit is FLOP/s, so write 312e12 for 312 TFLOP/s", where, field, v,
                           MIN_FLOPS, MAX_FLOPS);
    return LOOM_OK;
}

static loom_status check_bandwidth(const char *where, loom_status code, const char *field,
                                   double v) {
    if (!isfinite(v) || v <= 0)
        return loom__error(code, "%s: field '%s': %g is not a positive bandwidth; give bytes/s "
                           "(300e9 for 300 GB/s)", where, field, v);
    if (v < MIN_BANDWIDTH || v > MAX_BANDWIDTH)
        return loom__error(code, "%s: field '%s': %g bytes/s is implausible (expected %g to %g): "
                           "the unit is bytes/s, so write 300e9 for 300 GB/s", where, field, v,
                           MIN_BANDWIDTH, MAX_BANDWIDTH);
    return LOOM_OK;
}

static loom_status check_link(const char *where, loom_status code, const char *name,
                              const loom_device_link *l, int required) {
    char field[64];
    if (!required && l->bandwidth == 0 && l->latency == 0) return LOOM_OK;
    snprintf(field, sizeof field, "%s.bandwidth", name);
    LOOM_CHECK(check_bandwidth(where, code, field, l->bandwidth));
    snprintf(field, sizeof field, "%s.latency", name);
    if (!isfinite(l->latency) || l->latency < 0 || l->latency > MAX_LATENCY)
        return loom__error(code, "%s: field '%s': %g is not a latency in seconds (0 to %g): "
                           "write 5e-6 for 5 us", where, field, l->latency, MAX_LATENCY);
    return LOOM_OK;
}

static loom_status check_text(const char *where, loom_status code, const char *field,
                              const char *s, size_t cap) {
    if (!memchr(s, '\0', cap))
        return loom__error(code, "%s: field '%s' is not NUL-terminated within %zu bytes", where,
                           field, cap);
    return LOOM_OK;
}

// Checks every field of a spec; messages start with `where` (a file name, or "device spec").
static loom_status check_spec(const loom_device_spec *s, const char *where, loom_status code) {
    LOOM_CHECK(check_text(where, code, "name", s->name, sizeof s->name));
    LOOM_CHECK(check_text(where, code, "source", s->source, sizeof s->source));
    LOOM_CHECK(check_text(where, code, "notes", s->notes, sizeof s->notes));
    if (!s->name[0])
        return loom__error(code, "%s: field 'name' is empty; name the device (\"h100-80gb-sxm\")",
                           where);
    for (const char *p = s->name; *p; p++)
        if ((unsigned char)*p < 0x20 || *p == '/')
            return loom__error(code, "%s: field 'name' (\"%s\") holds a control character or "
                               "'/'; use letters, digits, '-', '_' or '.'", where, s->name);
    if ((int)s->kind < 0 || s->kind >= LOOM_DEVICE_KIND_COUNT)
        return loom__error(code, "%s: field 'kind' is %d; use \"cpu\" or \"gpu\"", where,
                           (int)s->kind);
    LOOM_CHECK(check_flops(where, code, "peak_flops_f32", s->peak_flops_f32, RATE_REQUIRED));
    LOOM_CHECK(check_flops(where, code, "peak_flops_tf32", s->peak_flops_tf32, RATE_OPTIONAL));
    LOOM_CHECK(check_flops(where, code, "peak_flops_bf16", s->peak_flops_bf16, RATE_OPTIONAL));
    LOOM_CHECK(check_flops(where, code, "peak_flops_f16", s->peak_flops_f16, RATE_OPTIONAL));
    double e = s->matmul_efficiency;
    if (!isfinite(e) || e <= 0 || e > 1)
        return loom__error(code, "%s: field 'matmul_efficiency': %g is not in (0, 1]; give the "
                           "fraction of peak a large matmul reaches (0.7), or 1 when the peaks "
                           "are measured rates", where, e);
    if (s->memory_bytes < MIN_MEMORY)
        return loom__error(code, "%s: field 'memory_bytes': %llu is not a memory size in bytes "
                           "(at least %llu): write 80e9 for 80 GB", where,
                           (unsigned long long)s->memory_bytes, (unsigned long long)MIN_MEMORY);
    LOOM_CHECK(check_bandwidth(where, code, "memory_bandwidth", s->memory_bandwidth));
    if (s->devices_per_node < 1 || s->devices_per_node > 65536)
        return loom__error(code, "%s: field 'devices_per_node': %d is not in [1, 65536]", where,
                           s->devices_per_node);
    if (s->devices_per_node > 1 && s->intra_node.bandwidth == 0 && s->intra_node.latency == 0)
        return loom__error(code, "%s: field 'intra_node' is required when devices_per_node > 1: "
                           "give {\"bandwidth\": bytes/s per device one way, \"latency\": "
                           "seconds}", where);
    LOOM_CHECK(check_link(where, code, "intra_node", &s->intra_node, s->devices_per_node > 1));
    LOOM_CHECK(check_link(where, code, "inter_node", &s->inter_node, 0));
    return LOOM_OK;
}

loom_status loom_device_spec_validate(const loom_device_spec *spec) {
    if (!spec) return loom__error(LOOM_ERR_INVALID, "loom_device_spec_validate: spec is NULL");
    return check_spec(spec, "device spec", LOOM_ERR_INVALID);
}

// ---- reading ------------------------------------------------------------------------------------

typedef struct parse_ctx {
    const char *where;
} parse_ctx;

static loom_status field_error(const parse_ctx *c, const char *field, const char *what) {
    return loom__error(LOOM_ERR_FORMAT, "%s: field '%s' %s", c->where, field, what);
}

static loom_status get_number(const parse_ctx *c, json_t *v, const char *field, double *out) {
    if (!json_is_number(v))
        return field_error(c, field, "must be a number (SI units: FLOP/s, bytes, bytes/s, "
                           "seconds)");
    *out = json_number_value(v);
    return LOOM_OK;
}

static loom_status get_string(const parse_ctx *c, json_t *v, const char *field, char *dst,
                              size_t cap) {
    if (!json_is_string(v)) return field_error(c, field, "must be a string");
    size_t n = json_string_length(v);
    if (n >= cap || memchr(json_string_value(v), '\0', n))
        return loom__error(LOOM_ERR_FORMAT, "%s: field '%s' is longer than %zu bytes or holds a "
                           "NUL; shorten it", c->where, field, cap - 1);
    memcpy(dst, json_string_value(v), n + 1);
    return LOOM_OK;
}

static loom_status get_link(const parse_ctx *c, json_t *v, const char *name,
                            loom_device_link *out) {
    char field[64];
    if (!json_is_object(v))
        return loom__error(LOOM_ERR_FORMAT, "%s: field '%s' must be an object {\"bandwidth\": "
                           "bytes/s, \"latency\": seconds}", c->where, name);
    const char *key;
    json_t *val;
    json_object_foreach(v, key, val) {
        snprintf(field, sizeof field, "%s.%s", name, key);
        if (!strcmp(key, "bandwidth")) LOOM_CHECK(get_number(c, val, field, &out->bandwidth));
        else if (!strcmp(key, "latency")) LOOM_CHECK(get_number(c, val, field, &out->latency));
        else
            return loom__error(LOOM_ERR_FORMAT, "%s: unknown field '%s'; the fields of %s are "
                               "%s", c->where, field, name, known_link_fields);
    }
    const char *need[] = {"bandwidth", "latency"};
    for (int i = 0; i < 2; i++)
        if (!json_object_get(v, need[i])) {
            snprintf(field, sizeof field, "%s.%s", name, need[i]);
            return loom__error(LOOM_ERR_FORMAT, "%s: missing field '%s' (%s)", c->where, field,
                               i == 0 ? "bytes/s per device, one direction"
                                      : "seconds per step; 0 if unknown");
        }
    return LOOM_OK;
}

static loom_status parse_root(const parse_ctx *c, json_t *root, loom_device_spec *s) {
    if (!json_is_object(root))
        return loom__error(LOOM_ERR_FORMAT, "%s: expected a JSON object {\"name\": ..., "
                           "\"kind\": ..., ...} (docs/devices.md)", c->where);
    s->matmul_efficiency = 1;
    const char *key;
    json_t *v;
    json_object_foreach(root, key, v) {
        if (!strcmp(key, "version")) {
            if (!json_is_integer(v) || json_integer_value(v) != SPEC_VERSION)
                return field_error(c, key, "must be 1 (the only version of this format)");
        } else if (!strcmp(key, "name")) {
            LOOM_CHECK(get_string(c, v, key, s->name, sizeof s->name));
        } else if (!strcmp(key, "kind")) {
            const char *k = json_string_value(v);
            if (k && !strcmp(k, "cpu")) s->kind = LOOM_DEVICE_CPU;
            else if (k && !strcmp(k, "gpu")) s->kind = LOOM_DEVICE_GPU;
            else return field_error(c, key, "must be \"cpu\" or \"gpu\"");
        } else if (!strncmp(key, "peak_flops_", 11)) {
            double *dst = !strcmp(key, "peak_flops_f32")    ? &s->peak_flops_f32
                          : !strcmp(key, "peak_flops_tf32") ? &s->peak_flops_tf32
                          : !strcmp(key, "peak_flops_bf16") ? &s->peak_flops_bf16
                          : !strcmp(key, "peak_flops_f16")  ? &s->peak_flops_f16
                                                            : NULL;
            if (!dst)
                return loom__error(LOOM_ERR_FORMAT, "%s: unknown field '%s'; the known fields "
                                   "are %s", c->where, key, known_fields);
            LOOM_CHECK(get_number(c, v, key, dst));
            LOOM_CHECK(check_flops(c->where, LOOM_ERR_FORMAT, key, *dst,
                                   dst == &s->peak_flops_f32 ? RATE_REQUIRED : RATE_GIVEN));
        } else if (!strcmp(key, "matmul_efficiency")) {
            LOOM_CHECK(get_number(c, v, key, &s->matmul_efficiency));
        } else if (!strcmp(key, "memory_bytes")) {
            double m = 0;
            LOOM_CHECK(get_number(c, v, key, &m));
            if (!(m >= 0) || m >= 9.2e18 || m != floor(m))
                return field_error(c, key, "must be a whole number of bytes (80e9 for 80 GB)");
            s->memory_bytes = json_is_integer(v) ? (uint64_t)json_integer_value(v) : (uint64_t)m;
        } else if (!strcmp(key, "memory_bandwidth")) {
            LOOM_CHECK(get_number(c, v, key, &s->memory_bandwidth));
        } else if (!strcmp(key, "devices_per_node")) {
            if (!json_is_integer(v) || json_integer_value(v) < 1 || json_integer_value(v) > 65536)
                return field_error(c, key, "must be an integer in [1, 65536]");
            s->devices_per_node = (int)json_integer_value(v);
        } else if (!strcmp(key, "intra_node") || !strcmp(key, "inter_node")) {
            loom_device_link *l = !strcmp(key, "intra_node") ? &s->intra_node : &s->inter_node;
            LOOM_CHECK(get_link(c, v, key, l));
            LOOM_CHECK(check_link(c->where, LOOM_ERR_FORMAT, key, l, 1));
        } else if (!strcmp(key, "source")) {
            LOOM_CHECK(get_string(c, v, key, s->source, sizeof s->source));
        } else if (!strcmp(key, "notes")) {
            LOOM_CHECK(get_string(c, v, key, s->notes, sizeof s->notes));
        } else {
            return loom__error(LOOM_ERR_FORMAT, "%s: unknown field '%s'; the known fields are %s",
                               c->where, key, known_fields);
        }
    }
    static const struct {
        const char *field, *what;
    } required[] = {
        {"name", "the device's name, e.g. \"h100-80gb-sxm\""},
        {"kind", "\"cpu\" or \"gpu\""},
        {"peak_flops_f32", "peak fp32 matmul FLOP/s of one device, e.g. 67e12"},
        {"memory_bytes", "bytes of memory per device, e.g. 80e9"},
        {"memory_bandwidth", "bytes/s of that memory, e.g. 3.35e12"},
        {"devices_per_node", "devices joined by the intra-node link, e.g. 8"},
    };
    for (size_t i = 0; i < sizeof required / sizeof required[0]; i++)
        if (!json_object_get(root, required[i].field))
            return loom__error(LOOM_ERR_FORMAT, "%s: missing required field '%s' (%s)", c->where,
                               required[i].field, required[i].what);
    return check_spec(s, c->where, LOOM_ERR_FORMAT);
}

loom_status loom_device_spec_parse(const char *text, size_t len, const char *source_name,
                                   loom_device_spec *out) {
    if (!out) return loom__error(LOOM_ERR_INVALID, "loom_device_spec_parse: out is NULL");
    memset(out, 0, sizeof *out);
    parse_ctx c = {source_name ? source_name : "<string>"};
    if (!text || len == 0)
        return loom__error(LOOM_ERR_FORMAT, "%s: empty file; a device spec is a JSON object "
                           "(docs/devices.md)", c.where);
    json_error_t err;
    json_t *root = json_loadb(text, len, JSON_REJECT_DUPLICATES, &err);
    if (!root)
        return loom__error(LOOM_ERR_FORMAT, "%s: line %d, column %d: %s", c.where, err.line,
                           err.column, err.text);
    loom_status st = parse_root(&c, root, out);
    json_decref(root);
    if (st < 0) memset(out, 0, sizeof *out);
    return st;
}

loom_status loom_device_spec_load(const char *path, loom_device_spec *out) {
    if (!out) return loom__error(LOOM_ERR_INVALID, "loom_device_spec_load: out is NULL");
    memset(out, 0, sizeof *out);
    if (!path) return loom__error(LOOM_ERR_INVALID, "loom_device_spec_load: path is NULL");
    loom__mapped_file m;
    LOOM_CHECK(loom__map_file(path, "device spec", &m));
    loom_status st = loom_device_spec_parse((const char *)m.data, m.size, path, out);
    loom__unmap_file(&m);
    return st;
}

// ---- writing ------------------------------------------------------------------------------------

// The shortest %g form that reads back as exactly v.
static void format_double(char *buf, size_t cap, double v) {
    for (int p = 1; p <= 17; p++) {
        snprintf(buf, cap, "%.*g", p, v);
        if (strtod(buf, NULL) == v) return;
    }
}

typedef struct text_buf {
    char *data;
    size_t len, cap;
    int failed;
} text_buf;

static void put(text_buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void put(text_buf *b, const char *fmt, ...) {
    if (b->failed) return;
    va_list ap;
    for (;;) {
        va_start(ap, fmt);
        char *dst = b->data ? b->data + b->len : NULL;
        int n = vsnprintf(dst, b->data ? b->cap - b->len : 0, fmt, ap);
        va_end(ap);
        if (n < 0) {
            b->failed = 1;
            return;
        }
        if (b->data && b->len + (size_t)n < b->cap) {
            b->len += (size_t)n;
            return;
        }
        size_t cap = (b->cap ? b->cap * 2 : 4096) + (size_t)n;
        char *p = loom__realloc(b->data, cap);
        if (!p) {
            b->failed = 1;
            return;
        }
        b->data = p, b->cap = cap;
    }
}

static void put_number(text_buf *b, const char *key, double v, int last) {
    char num[64];
    format_double(num, sizeof num, v);
    put(b, "  \"%s\": %s%s\n", key, num, last ? "" : ",");
}

static void put_string(text_buf *b, const char *key, const char *s, int last) {
    json_t *js = json_string(s);
    char *q = js ? json_dumps(js, JSON_ENCODE_ANY) : NULL;
    if (!q) b->failed = 1;
    else put(b, "  \"%s\": %s%s\n", key, q, last ? "" : ",");
    free(q);
    json_decref(js);
}

static void put_link(text_buf *b, const char *key, const loom_device_link *l, int last) {
    char bw[64], lat[64];
    format_double(bw, sizeof bw, l->bandwidth);
    format_double(lat, sizeof lat, l->latency);
    put(b, "  \"%s\": {\"bandwidth\": %s, \"latency\": %s}%s\n", key, bw, lat, last ? "" : ",");
}

loom_status loom_device_spec_save(const char *path, const loom_device_spec *s) {
    if (!path || !s) return loom__error(LOOM_ERR_INVALID, "loom_device_spec_save: NULL argument");
    if (check_spec(s, "device spec", LOOM_ERR_INVALID) < 0) {
        loom__error_prefix("not writing %s", path);
        return LOOM_ERR_INVALID;
    }
    int has_intra = s->intra_node.bandwidth > 0, has_inter = s->inter_node.bandwidth > 0;
    text_buf b = {0};
    put(&b, "{\n");
    put(&b, "  \"version\": %d,\n", SPEC_VERSION);
    put_string(&b, "name", s->name, 0);
    put_string(&b, "kind", loom_device_kind_name(s->kind), 0);
    put_number(&b, "peak_flops_f32", s->peak_flops_f32, 0);
    if (s->peak_flops_tf32 > 0) put_number(&b, "peak_flops_tf32", s->peak_flops_tf32, 0);
    if (s->peak_flops_bf16 > 0) put_number(&b, "peak_flops_bf16", s->peak_flops_bf16, 0);
    if (s->peak_flops_f16 > 0) put_number(&b, "peak_flops_f16", s->peak_flops_f16, 0);
    put_number(&b, "matmul_efficiency", s->matmul_efficiency, 0);
    put(&b, "  \"memory_bytes\": %llu,\n", (unsigned long long)s->memory_bytes);
    put_number(&b, "memory_bandwidth", s->memory_bandwidth, 0);
    int rest = has_intra + has_inter + (s->source[0] != 0) + (s->notes[0] != 0);
    put(&b, "  \"devices_per_node\": %d%s\n", s->devices_per_node, rest ? "," : "");
    if (has_intra) put_link(&b, "intra_node", &s->intra_node, --rest == 0);
    if (has_inter) put_link(&b, "inter_node", &s->inter_node, --rest == 0);
    if (s->source[0]) put_string(&b, "source", s->source, --rest == 0);
    if (s->notes[0]) put_string(&b, "notes", s->notes, --rest == 0);
    put(&b, "}\n");
    loom_status st = b.failed ? loom__error(LOOM_ERR_NOMEM, "writing %s: out of memory", path)
                              : loom__write_file_atomic(path, b.data, b.len);
    loom__free(b.data);
    return st;
}
