// Tests of device specs: the built-in GPU specs hold their datasheet numbers, JSON files round
// trip exactly, bad files fail naming the file and the field, the "cpu" spec comes from the
// cache, and `loom bench devices --quick` writes a spec that loads with sane rates.

#include "cli-testutil.h"
#include "io-testutil.h"

#include "cost/op-cost.h"
#include "loom/device.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <sys/wait.h>

// ---- helpers ----------------------------------------------------------------------------------

static int links_equal(loom_device_link a, loom_device_link b) {
    return a.bandwidth == b.bandwidth && a.latency == b.latency;
}

static int specs_equal(const loom_device_spec *a, const loom_device_spec *b) {
    return !strcmp(a->name, b->name) && a->kind == b->kind &&
           a->peak_flops_f32 == b->peak_flops_f32 && a->peak_flops_tf32 == b->peak_flops_tf32 &&
           a->peak_flops_bf16 == b->peak_flops_bf16 && a->peak_flops_f16 == b->peak_flops_f16 &&
           a->matmul_efficiency == b->matmul_efficiency && a->memory_bytes == b->memory_bytes &&
           a->memory_bandwidth == b->memory_bandwidth &&
           a->devices_per_node == b->devices_per_node &&
           links_equal(a->intra_node, b->intra_node) &&
           links_equal(a->inter_node, b->inter_node) && !strcmp(a->source, b->source) &&
           !strcmp(a->notes, b->notes);
}

// A complete valid spec as JSON text, with `extra` spliced in before the closing brace (it
// starts with ", " when not empty) and the field `drop` left out (NULL: none).
static char *spec_json(const char *drop, const char *extra) {
    static const char *fields[][2] = {
        {"name", "\"test-gpu\""},
        {"kind", "\"gpu\""},
        {"peak_flops_f32", "50e12"},
        {"peak_flops_bf16", "400e12"},
        {"memory_bytes", "42949672960"},
        {"memory_bandwidth", "1.5e12"},
        {"devices_per_node", "4"},
        {"intra_node", "{\"bandwidth\": 100e9, \"latency\": 4e-6}"},
    };
    static char buf[4096];
    size_t n = 0;
    n += (size_t)snprintf(buf + n, sizeof buf - n, "{");
    int first = 1;
    for (size_t i = 0; i < sizeof fields / sizeof fields[0]; i++) {
        if (drop && !strcmp(drop, fields[i][0])) continue;
        n += (size_t)snprintf(buf + n, sizeof buf - n, "%s\"%s\": %s", first ? "" : ", ",
                              fields[i][0], fields[i][1]);
        first = 0;
    }
    snprintf(buf + n, sizeof buf - n, "%s}", extra ? extra : "");
    return buf;
}

// Parsing `text` as "bad.json" must fail with LOOM_ERR_FORMAT naming the file and `word`.
#define PARSE_FAILS(text, word)                                                              \
    do {                                                                                     \
        loom_device_spec s_;                                                                 \
        const char *t_ = (text);                                                             \
        CHECK_ERR(loom_device_spec_parse(t_, strlen(t_), "bad.json", &s_), LOOM_ERR_FORMAT,  \
                  "bad.json", word);                                                         \
        CHECK_MSG(s_.name[0] == '\0' && s_.peak_flops_f32 == 0, "spec not zeroed on error"); \
    } while (0)

// ---- built-ins --------------------------------------------------------------------------------

// These are the datasheet numbers cited in src/cost/device-spec.c. The test is a guard against
// edits: change a number there only with its source, and change it here too.
static void test_builtin_gpus(void) {
    loom_device_spec s;
    CHECK_OK(loom_device_spec_builtin("a100-80gb-sxm", &s));
    CHECK(!strcmp(s.name, "a100-80gb-sxm") && s.kind == LOOM_DEVICE_GPU);
    CHECK(s.peak_flops_f32 == 19.5e12);    // A100 datasheet: FP32 19.5 TFLOPS
    CHECK(s.peak_flops_tf32 == 156e12);    // TF32 Tensor Core 156 TFLOPS (dense)
    CHECK(s.peak_flops_bf16 == 312e12);    // BFLOAT16 Tensor Core 312 TFLOPS (dense)
    CHECK(s.peak_flops_f16 == 312e12);     // FP16 Tensor Core 312 TFLOPS (dense)
    CHECK(s.memory_bytes == 80ull << 30);  // 80GB HBM2e
    CHECK(s.memory_bandwidth == 2039e9);   // 2,039 GB/s
    CHECK(s.devices_per_node == 8);        // HGX/DGX A100
    CHECK(s.intra_node.bandwidth == 300e9);  // NVLink 600 GB/s bidirectional
    CHECK(s.inter_node.bandwidth == 25e9);   // HDR InfiniBand 200 Gb/s per GPU
    CHECK(s.matmul_efficiency > 0 && s.matmul_efficiency <= 1);
    CHECK(s.intra_node.latency > 0 && s.intra_node.latency < 1e-4);
    CHECK(s.inter_node.latency >= s.intra_node.latency && s.inter_node.latency < 1e-4);
    CHECK(strstr(s.source, "datasheet") != NULL);
    CHECK_OK(loom_device_spec_validate(&s));
    CHECK(loom_device_spec_matmul_rate(&s, LOOM_DTYPE_BF16) == 312e12 * s.matmul_efficiency);
    CHECK(loom_device_spec_matmul_rate(&s, LOOM_DTYPE_I32) == 0);

    CHECK_OK(loom_device_spec_builtin("h100-80gb-sxm", &s));
    CHECK(!strcmp(s.name, "h100-80gb-sxm") && s.kind == LOOM_DEVICE_GPU);
    CHECK(s.peak_flops_f32 == 66.9e12);    // H100 SXM datasheet: FP32 67 TFLOPS (66.9)
    CHECK(s.peak_flops_tf32 == 494.7e12);  // TF32 989 TFLOPS with sparsity
    CHECK(s.peak_flops_bf16 == 989.4e12);  // BF16 1,979 TFLOPS with sparsity
    CHECK(s.peak_flops_f16 == 989.4e12);   // FP16 1,979 TFLOPS with sparsity
    CHECK(s.memory_bytes == 80ull << 30);  // 80GB HBM3
    CHECK(s.memory_bandwidth == 3350e9);   // 3.35 TB/s
    CHECK(s.devices_per_node == 8);        // DGX H100
    CHECK(s.intra_node.bandwidth == 450e9);  // NVLink 900 GB/s bidirectional
    CHECK(s.inter_node.bandwidth == 50e9);   // NDR InfiniBand 400 Gb/s per GPU
    CHECK(s.matmul_efficiency > 0 && s.matmul_efficiency <= 1);
    CHECK_OK(loom_device_spec_validate(&s));

    // The list of built-ins, and an unknown name that lists them.
    int n = 0, saw_cpu = 0;
    for (const char *name; (name = loom_device_spec_builtin_name(n)); n++)
        saw_cpu |= !strcmp(name, "cpu");
    CHECK(n == 3 && saw_cpu);
    CHECK(loom_device_spec_builtin_name(-1) == NULL);
    CHECK_ERR(loom_device_spec_builtin("tpu-v9", &s), LOOM_ERR_NOT_FOUND, "tpu-v9",
              "h100-80gb-sxm");
    CHECK_ERR(loom_device_spec_get("tpu-v9", &s), LOOM_ERR_NOT_FOUND, "tpu-v9", "a100-80gb-sxm");
    CHECK(!strcmp(loom_device_kind_name(LOOM_DEVICE_GPU), "gpu"));
    CHECK(loom_device_kind_name(LOOM_DEVICE_KIND_COUNT) == NULL);
}

// ---- files ------------------------------------------------------------------------------------

static void test_round_trip(void) {
    loom_device_spec a, b;
    for (int i = 0; i < 2; i++) {
        const char *name = loom_device_spec_builtin_name(i);
        CHECK_OK(loom_device_spec_builtin(name, &a));
        const char *path = tu_path(i == 0 ? "a100.json" : "h100.json");
        CHECK_OK(loom_device_spec_save(path, &a));
        CHECK_OK(loom_device_spec_load(path, &b));
        CHECK_MSG(specs_equal(&a, &b), "%s does not round trip", name);
        CHECK_OK(loom_device_spec_get(path, &b));  // a path works where a name does
        CHECK(specs_equal(&a, &b));
        CHECK(tu_count_entries(tu_scratch, ".tmp") == 0);
    }

    // Awkward values and text: numbers that need 17 digits, a one-device CPU without links,
    // quotes, newlines and UTF-8 in the strings.
    a = (loom_device_spec){.kind = LOOM_DEVICE_CPU, .matmul_efficiency = 1.0 / 3};
    snprintf(a.name, sizeof a.name, "odd.cpu_1");
    a.peak_flops_f32 = 1e11 / 3;
    a.memory_bytes = (1ull << 40) + 12345;
    a.memory_bandwidth = 2.0 / 3 * 1e10;
    a.devices_per_node = 1;
    a.inter_node = (loom_device_link){.bandwidth = 12.5e9 / 7, .latency = 0};
    snprintf(a.source, sizeof a.source, "said \"so\"\nby\ttab \xc2\xb5s \\ slash");
    memset(a.notes, 'x', sizeof a.notes - 1);
    a.notes[sizeof a.notes - 1] = '\0';
    const char *path = tu_path("odd.json");
    CHECK_OK(loom_device_spec_save(path, &a));
    CHECK_OK(loom_device_spec_load(path, &b));
    CHECK_MSG(specs_equal(&a, &b), "odd spec does not round trip");
    CHECK(b.intra_node.bandwidth == 0 && b.peak_flops_bf16 == 0);

    // Saving an invalid spec writes nothing and names the field.
    a.peak_flops_f32 = -1;
    const char *bad = tu_path("invalid.json");
    CHECK_ERR(loom_device_spec_save(bad, &a), LOOM_ERR_INVALID, "peak_flops_f32", "invalid.json");
    CHECK(!tu_file_exists(bad));
    // Saving into a directory that does not exist names the path.
    CHECK_OK(loom_device_spec_builtin("h100-80gb-sxm", &a));
    CHECK(loom_device_spec_save(tu_path("no/such/dir.json"), &a) == LOOM_ERR_IO);
    CHECK(strstr(loom_last_error(), "no/such") != NULL);

    // A minimal file: optional fields take their defaults.
    const char *min = "{\"name\": \"m\", \"kind\": \"cpu\", \"peak_flops_f32\": 1e10, "
                      "\"memory_bytes\": 1e9, \"memory_bandwidth\": 1e10, \"devices_per_node\": 1}";
    CHECK_OK(loom_device_spec_parse(min, strlen(min), NULL, &b));
    CHECK(b.matmul_efficiency == 1 && b.memory_bytes == 1000000000ull && b.peak_flops_f16 == 0);
    CHECK(b.inter_node.bandwidth == 0 && b.source[0] == '\0');
    const char *full = spec_json(NULL, ", \"version\": 1, \"matmul_efficiency\": 0.75, "
                                       "\"inter_node\": {\"bandwidth\": 25e9, \"latency\": 6e-6}");
    CHECK_OK(loom_device_spec_parse(full, strlen(full), NULL, &b));
    CHECK(b.devices_per_node == 4 && b.intra_node.bandwidth == 100e9);
    CHECK(b.matmul_efficiency == 0.75);
    CHECK(loom_device_spec_matmul_rate(&b, LOOM_DTYPE_BF16) == 400e12 * 0.75);
}

static void test_bad_files(void) {
    // Malformed JSON: the parser's line and column.
    PARSE_FAILS("{\"name\": \"x\",", "line 1");
    PARSE_FAILS("", "empty");
    PARSE_FAILS("[1, 2]", "object");
    PARSE_FAILS(spec_json(NULL, ", \"name\": \"again\""), "duplicate");
    // Unknown fields, with the list of known ones.
    PARSE_FAILS(spec_json(NULL, ", \"flops\": 1e12"), "'flops'");
    PARSE_FAILS(spec_json(NULL, ", \"flops\": 1e12"), "known fields are version, name, kind");
    PARSE_FAILS(spec_json(NULL, ", \"peak_flops_fp8\": 1e15"), "'peak_flops_fp8'");
    PARSE_FAILS(spec_json("intra_node", ", \"intra_node\": {\"bw\": 1e9, \"latency\": 0}"),
                "'intra_node.bw'");
    // Missing required fields.
    const char *required[] = {"name", "kind", "peak_flops_f32", "memory_bytes",
                              "memory_bandwidth", "devices_per_node"};
    for (size_t i = 0; i < sizeof required / sizeof *required; i++) {
        char want[64];
        snprintf(want, sizeof want, "missing required field '%s'", required[i]);
        PARSE_FAILS(spec_json(required[i], NULL), want);
    }
    PARSE_FAILS(spec_json("intra_node", NULL), "'intra_node' is required");
    PARSE_FAILS(spec_json(NULL, ", \"inter_node\": {\"bandwidth\": 25e9}"),
                "'inter_node.latency'");
    // Negative and zero rates, wrong units, out-of-range values.
    PARSE_FAILS(spec_json("peak_flops_f32", ", \"peak_flops_f32\": -1e12"), "'peak_flops_f32'");
    PARSE_FAILS(spec_json("peak_flops_f32", ", \"peak_flops_f32\": 0"), "'peak_flops_f32'");
    PARSE_FAILS(spec_json("peak_flops_bf16", ", \"peak_flops_bf16\": 0"), "leave the field out");
    PARSE_FAILS(spec_json(NULL, ", \"peak_flops_f16\": -5"), "'peak_flops_f16'");
    PARSE_FAILS(spec_json("peak_flops_f32", ", \"peak_flops_f32\": 67"), "implausible");
    PARSE_FAILS(spec_json("memory_bandwidth", ", \"memory_bandwidth\": -1.5e12"),
                "'memory_bandwidth'");
    PARSE_FAILS(spec_json("memory_bandwidth", ", \"memory_bandwidth\": 2039"), "300e9");
    PARSE_FAILS(spec_json("memory_bytes", ", \"memory_bytes\": -80"), "'memory_bytes'");
    PARSE_FAILS(spec_json("memory_bytes", ", \"memory_bytes\": 80"), "'memory_bytes'");
    PARSE_FAILS(spec_json("memory_bytes", ", \"memory_bytes\": 1073741824.5"), "'memory_bytes'");
    PARSE_FAILS(spec_json("intra_node", ", \"intra_node\": {\"bandwidth\": -1, \"latency\": 0}"),
                "'intra_node.bandwidth'");
    PARSE_FAILS(spec_json("intra_node", ", \"intra_node\": {\"bandwidth\": 0, \"latency\": 0}"),
                "'intra_node.bandwidth'");
    PARSE_FAILS(spec_json("intra_node", ", \"intra_node\": {\"bandwidth\": 1e11, \"latency\": 5}"),
                "'intra_node.latency'");
    PARSE_FAILS(spec_json("intra_node",
                          ", \"intra_node\": {\"bandwidth\": 1e11, \"latency\": -1e-6}"),
                "'intra_node.latency'");
    PARSE_FAILS(spec_json(NULL, ", \"inter_node\": {\"bandwidth\": 0, \"latency\": 1e-6}"),
                "'inter_node.bandwidth'");
    PARSE_FAILS(spec_json(NULL, ", \"matmul_efficiency\": 1.5"), "'matmul_efficiency'");
    PARSE_FAILS(spec_json(NULL, ", \"matmul_efficiency\": 0"), "'matmul_efficiency'");
    // Wrong types and values.
    PARSE_FAILS(spec_json("kind", ", \"kind\": \"tpu\""), "'kind'");
    PARSE_FAILS(spec_json("devices_per_node", ", \"devices_per_node\": \"8\""),
                "'devices_per_node'");
    PARSE_FAILS(spec_json("devices_per_node", ", \"devices_per_node\": 0"), "'devices_per_node'");
    PARSE_FAILS(spec_json("memory_bandwidth", ", \"memory_bandwidth\": \"fast\""),
                "'memory_bandwidth'");
    PARSE_FAILS(spec_json("intra_node", ", \"intra_node\": 100e9"), "'intra_node'");
    PARSE_FAILS(spec_json(NULL, ", \"version\": 2"), "'version'");
    PARSE_FAILS(spec_json("name", ", \"name\": \"\""), "'name'");
    PARSE_FAILS(spec_json("name", ", \"name\": \"a/b\""), "'name'");
    PARSE_FAILS(spec_json("name", ", \"name\": 7"), "'name'");
    char long_name[200];
    snprintf(long_name, sizeof long_name, ", \"name\": \"%0100d\"", 0);
    PARSE_FAILS(spec_json("name", long_name), "longer than 63");

    // From a file: the message names the path; a missing file is NOT_FOUND.
    const char *path = tu_path("bad-unknown.json");
    const char *text = spec_json(NULL, ", \"bogus\": 1");
    CHECK(tu_write_file(path, text, strlen(text)) == 0);
    loom_device_spec s;
    CHECK_ERR(loom_device_spec_load(path, &s), LOOM_ERR_FORMAT, path, "'bogus'");
    CHECK_ERR(loom_device_spec_get(path, &s), LOOM_ERR_FORMAT, path, "'bogus'");
    CHECK_ERR(loom_device_spec_load(tu_path("missing.json"), &s), LOOM_ERR_NOT_FOUND,
              "missing.json", NULL);
    const char *empty = tu_path("empty.json");
    CHECK(tu_write_file(empty, "", 0) == 0);
    CHECK_ERR(loom_device_spec_load(empty, &s), LOOM_ERR_FORMAT, "empty.json", "empty");

    // loom_device_spec_validate on structs filled in by hand.
    CHECK_OK(loom_device_spec_builtin("a100-80gb-sxm", &s));
    loom_device_spec t = s;
    t.memory_bandwidth = 0;
    CHECK_ERR(loom_device_spec_validate(&t), LOOM_ERR_INVALID, "'memory_bandwidth'", NULL);
    t = s;
    t.intra_node = (loom_device_link){0, 0};
    CHECK_ERR(loom_device_spec_validate(&t), LOOM_ERR_INVALID, "'intra_node'", NULL);
    t = s;
    t.peak_flops_bf16 = NAN;
    CHECK_ERR(loom_device_spec_validate(&t), LOOM_ERR_INVALID, "'peak_flops_bf16'", NULL);
    t = s;
    t.kind = LOOM_DEVICE_KIND_COUNT;
    CHECK_ERR(loom_device_spec_validate(&t), LOOM_ERR_INVALID, "'kind'", NULL);
    t = s;
    t.peak_flops_tf32 = 0;  // 0: not supported, fine in a struct
    CHECK_OK(loom_device_spec_validate(&t));
}

// ---- the "cpu" spec and its cache path ------------------------------------------------------

static char cache_dir[512];

static void test_cache_path(void) {
    char buf[1024], want[1024];
    snprintf(cache_dir, sizeof cache_dir, "%s", tu_path("cache"));
    setenv("XDG_CACHE_HOME", cache_dir, 1);
    CHECK_OK(loom_device_spec_cache_path("cpu", buf, sizeof buf));
    snprintf(want, sizeof want, "%s/loom/devices/cpu.json", cache_dir);
    CHECK_MSG(!strcmp(buf, want), "%s != %s", buf, want);
    CHECK(loom_device_spec_cache_path("cpu", buf, 8) == LOOM_ERR_INVALID);
    CHECK(loom_device_spec_cache_path("a/b", buf, sizeof buf) == LOOM_ERR_INVALID);

    // XDG_CACHE_HOME must be absolute; otherwise HOME/.cache.
    const char *home = getenv("HOME");
    char saved_home[512] = "";
    if (home) snprintf(saved_home, sizeof saved_home, "%s", home);
    setenv("XDG_CACHE_HOME", "relative/dir", 1);
    setenv("HOME", "/home/someone", 1);
    CHECK_OK(loom_device_spec_cache_path("cpu", buf, sizeof buf));
    CHECK_MSG(!strcmp(buf, "/home/someone/.cache/loom/devices/cpu.json"), "%s", buf);
    unsetenv("XDG_CACHE_HOME");
    unsetenv("HOME");
    CHECK(loom_device_spec_cache_path("cpu", buf, sizeof buf) == LOOM_ERR_NOT_FOUND);
    if (saved_home[0]) setenv("HOME", saved_home, 1);
    setenv("XDG_CACHE_HOME", cache_dir, 1);

    // Not measured yet: the message says how to measure.
    loom_device_spec s;
    CHECK_ERR(loom_device_spec_builtin("cpu", &s), LOOM_ERR_NOT_FOUND, "loom bench devices",
              cache_dir);
    CHECK_ERR(loom_device_spec_get("cpu", &s), LOOM_ERR_NOT_FOUND, "loom bench devices", NULL);
}

// ---- the CLI ----------------------------------------------------------------------------------

// A measured spec: the sanity ranges hold for any machine loom runs on.
static void check_measured(const loom_device_spec *s) {
    CHECK(!strcmp(s->name, "cpu") && s->kind == LOOM_DEVICE_CPU);
    CHECK_MSG(s->peak_flops_f32 > 1e9 && s->peak_flops_f32 < 10e12, "sgemm %g FLOP/s",
              s->peak_flops_f32);
    CHECK(s->peak_flops_bf16 == 0 && s->peak_flops_f16 == 0 && s->matmul_efficiency == 1);
    CHECK_MSG(s->memory_bandwidth > 1e8 && s->memory_bandwidth < 1e13, "memory %g B/s",
              s->memory_bandwidth);
    CHECK(s->memory_bytes >= (1ull << 20));
    long cores = sysconf(_SC_NPROCESSORS_ONLN);
    CHECK_MSG(s->devices_per_node == (cores > 0 ? cores : 1), "devices_per_node %d",
              s->devices_per_node);
    CHECK_MSG(s->intra_node.bandwidth > 1e6 && s->intra_node.latency > 0 &&
                  s->intra_node.latency < 0.1,
              "intra_node %g B/s, %g s", s->intra_node.bandwidth, s->intra_node.latency);
    CHECK(s->inter_node.bandwidth == 0);
    CHECK(has(s->source, "loom bench devices --quick"));
}

static void test_cli(void) {
    run_result r = run_cli("bench", "devices", "--help", NULL);
    CHECK_RUN(r, 0, "bench devices --help");
    CHECK(has(r.out, "--quick") && has(r.out, "--out") && has(r.out, "cpu.json"));
    run_free(&r);
    r = run_cli("--help", NULL);
    CHECK(has(r.out, "bench"));
    run_free(&r);

    // Usage errors exit 2 with a usage line.
    const char *cases[][3] = {{"bench", NULL, NULL},
                              {"bench", "nope", NULL},
                              {"bench", "devices", "--bogus"},
                              {"bench", "devices", "--threads"}};
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        r = run_cli(cases[i][0], cases[i][1], cases[i][2], NULL);
        CHECK_RUN(r, 2, cases[i][1] ? cases[i][1] : "bench");
        CHECK_MSG(has(r.err, "usage:"), "%s", r.err);
        run_free(&r);
    }
    r = run_cli("bench", "devices", "--quick", "--out", tu_path("no/such/dir/cpu.json"), NULL);
    CHECK_RUN(r, 1, "bench devices --out into a missing directory");
    CHECK_MSG(has(r.err, "no/such/dir"), "%s", r.err);
    run_free(&r);

    // --out FILE: the table on stdout, progress on stderr, a spec that loads.
    const char *out = tu_path("measured.json");
    r = run_cli("bench", "devices", "--quick", "--out", out, NULL);
    CHECK_RUN(r, 0, "bench devices --quick --out");
    CHECK_MSG(has(r.out, "sgemm") && has(r.out, "triad") && has(r.out, "all-reduce") &&
                  has(r.out, "all-gather"),
              "%s", r.out);
    CHECK_MSG(has(r.err, "wrote") && has(r.err, out), "%s", r.err);
    run_free(&r);
    loom_device_spec s;
    CHECK_OK(loom_device_spec_load(out, &s));
    check_measured(&s);

    // The default path: the cache under XDG_CACHE_HOME (created), then read as "cpu".
    char cached[1024];
    CHECK_OK(loom_device_spec_cache_path("cpu", cached, sizeof cached));
    CHECK(!tu_file_exists(cached));
    r = run_cli("bench", "devices", "--quick", NULL);
    CHECK_RUN(r, 0, "bench devices --quick");
    CHECK_MSG(has(r.err, cached), "%s", r.err);
    run_free(&r);
    CHECK_OK(loom_device_spec_builtin("cpu", &s));
    check_measured(&s);
    CHECK_OK(loom_device_spec_get("cpu", &s));

    // A damaged cache: the error names the file and says to measure again.
    CHECK(tu_write_file(cached, "{\"name\": \"cpu\"}", 15) == 0);
    CHECK_ERR(loom_device_spec_builtin("cpu", &s), LOOM_ERR_FORMAT, "loom bench devices",
              "missing required field");
}

// The collective model against the ring formulas of reference/cost-models.md, worked by hand.
static void test_collective_model(void) {
    loom_device_spec a100;
    CHECK_OK(loom_device_spec_builtin("a100-80gb-sxm", &a100));
    // 1 GB all-reduce on 8 GPUs of a node (300 GB/s, 3 us): 14 steps x 3 us + 1.75 GB / 300 GB/s.
    double t = loom_device_collective_seconds(&a100, LOOM_COLLECTIVE_ALL_REDUCE, 1e9, 8);
    CHECK_MSG(fabs(t - (42e-6 + 1.75e9 / 300e9)) < 1e-12, "all-reduce 1 GB x 8: %.9g s", t);
    // 1 GB all-gather on 16 GPUs (two nodes: 25 GB/s, 5 us): 15 x 5 us + (15/16) GB / 25 GB/s.
    t = loom_device_collective_seconds(&a100, LOOM_COLLECTIVE_ALL_GATHER, 1e9, 16);
    CHECK_MSG(fabs(t - (75e-6 + 0.9375e9 / 25e9)) < 1e-12, "all-gather 1 GB x 16: %.9g s", t);
    // Point to point: one step, the whole message.
    t = loom_device_collective_seconds(&a100, LOOM_COLLECTIVE_SEND_RECV, 1e6, 2);
    CHECK_MSG(fabs(t - (3e-6 + 1e6 / 300e9)) < 1e-15, "send 1 MB: %.9g s", t);
    CHECK(loom_device_collective_seconds(&a100, LOOM_COLLECTIVE_ALL_REDUCE, 1e9, 1) == 0);
    loom_device_link none = {0, 0};
    CHECK(loom_collective_seconds(&none, LOOM_COLLECTIVE_ALL_REDUCE, 1, 2) > 1e20);
}

// The roofline op model on hand-worked numbers (A100: f32 matmul 19.5 TFLOP/s x 0.8, bf16 312 x
// 0.8, 2039 GB/s): a (4, 256, 1024) x (1024, 1024) product is compute-bound, a GELU over the
// same activations memory-bound.
static void test_roofline(void) {
    loom_device_spec a100;
    CHECK_OK(loom_device_spec_builtin("a100-80gb-sxm", &a100));
    loom_graph_t g = NULL;
    CHECK_OK(loom_graph_create(&g));
    loom_value x = loom_graph_input(g, "x", LOOM_DTYPE_F32, 3, (int64_t[]){4, 256, 1024});
    loom_value w = loom_graph_param(g, "w", 2, (int64_t[]){1024, 1024});
    loom_value y = loom_linear(g, x, w, LOOM_NONE);
    loom_gelu(g, y);
    CHECK_OK(loom_graph_status(g));
    double flops = 2.0 * 4 * 256 * 1024 * 1024, act = 4.0 * 256 * 1024 * 4;
    double t = loom__op_seconds_roofline(&a100, g, &g->nodes[0], false, LOOM_DTYPE_F32);
    CHECK_MSG(fabs(t - flops / (19.5e12 * 0.8)) < 1e-12, "linear forward f32: %.9g s", t);
    t = loom__op_seconds_roofline(&a100, g, &g->nodes[0], true, LOOM_DTYPE_F32);
    CHECK_MSG(fabs(t - 2 * flops / (19.5e12 * 0.8)) < 1e-12, "linear backward f32: %.9g s", t);
    t = loom__op_seconds_roofline(&a100, g, &g->nodes[0], false, LOOM_DTYPE_BF16);
    double memory = (2 * act + 1024.0 * 1024 * 4) / 2 / 2039e9;  // x, y, w read or written, 16-bit
    double compute = flops / (312e12 * 0.8);
    CHECK_MSG(fabs(t - (compute > memory ? compute : memory)) < 1e-12, "linear bf16: %.9g s", t);
    t = loom__op_seconds_roofline(&a100, g, &g->nodes[1], false, LOOM_DTYPE_F32);
    CHECK_MSG(fabs(t - 2 * act / 2039e9) < 1e-12, "gelu forward: %.9g s (memory-bound)", t);
    loom_graph_destroy(g);
}

int main(void) {
    if (tu_scratch_make("devices") != 0) {
        fprintf(stderr, "cannot create a scratch directory\n");
        return 1;
    }
    test_builtin_gpus();
    test_collective_model();
    test_roofline();
    test_round_trip();
    test_bad_files();
    test_cache_path();
    if (access(LOOM_CLI_PATH, X_OK) == 0) test_cli();
    else CHECK_MSG(0, "loom CLI not found at %s", LOOM_CLI_PATH);
    tu_remove_tree(tu_scratch);
    return tu_finish();
}
