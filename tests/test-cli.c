// Tests of the loom command-line tool, run as a child process: help and usage errors (exit 2),
// bad input files (exit 1, naming the file), a tiny train -> save -> generate -> reload run,
// parallel runs with sharded checkpoints, and pipelines (trace, hybrid, parity, bad flags).

#include "cli-testutil.h"
#include "io-testutil.h"

#include "loom/data.h"
#include "loom/model.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <math.h>
#include <stdarg.h>
#include <sys/wait.h>
#include <unistd.h>

// ---- fixtures ---------------------------------------------------------------------------------

static char text_path[512], bin_path[512];

static void write_fixtures(void) {
    // A few KB of repeated sentences (plain text: byte tokens, vocabulary 256).
    const char *sentence = "the quick brown fox jumps over the lazy dog. ";
    size_t n = strlen(sentence);
    char *text = malloc(n * 100 + 1);
    for (int i = 0; i < 100; i++) memcpy(text + i * n, sentence, n);
    snprintf(text_path, sizeof text_path, "%s", tu_path("text.txt"));
    CHECK(tu_write_file(text_path, text, n * 100) == 0);
    free(text);

    // An llm.c token file written by hand: 256 int32 header words, then uint16 tokens up to 200.
    enum { N = 300 };
    uint8_t *bin = calloc(1, 1024 + 2 * N);
    int32_t header[3] = {20240520, 1, N};
    for (int i = 0; i < 3; i++)
        for (int b = 0; b < 4; b++) bin[4 * i + b] = (uint8_t)((uint32_t)header[i] >> (8 * b));
    for (int i = 0; i < N; i++) {
        uint16_t t = (uint16_t)(i % 201);  // 0..200
        bin[1024 + 2 * i] = (uint8_t)(t & 0xff);
        bin[1024 + 2 * i + 1] = (uint8_t)(t >> 8);
    }
    snprintf(bin_path, sizeof bin_path, "%s", tu_path("tokens.bin"));
    CHECK(tu_write_file(bin_path, bin, 1024 + 2 * N) == 0);
    free(bin);
}

// ---- help and usage ---------------------------------------------------------------------------

static void test_help(void) {
    run_result r = run_cli("--help", NULL);
    CHECK_RUN(r, 0, "loom --help");
    CHECK_MSG(has(r.out, "train") && has(r.out, "generate") && has(r.out, "graph"), "%s", r.out);
    run_free(&r);

    r = run_cli(NULL);
    CHECK_RUN(r, 2, "loom (no command)");
    CHECK_MSG(has_line_starting(r.err, "usage:"), "%s", r.err);
    run_free(&r);

    r = run_cli("frobnicate", NULL);
    CHECK_RUN(r, 2, "loom frobnicate");
    CHECK_MSG(has(r.err, "frobnicate"), "%s", r.err);
    run_free(&r);

    r = run_cli("train", "--help", NULL);
    CHECK_RUN(r, 0, "loom train --help");
    const char *flags[] = {"--model-dir", "--model",     "--data",       "--steps", "--batch",
                           "--seq",       "--lr",        "--weight-decay", "--beta1", "--beta2",
                           "--eps",       "--grad-clip", "--grad-accum", "--save",  "--log-json",
                           "--optimizer", "--threads", "--pp", "--micro-batches", "--schedule",
                           "--virtual-stages", "--pp-layers", "--pp-pivots", "pipeline ranks"};
    for (size_t i = 0; i < sizeof flags / sizeof *flags; i++)
        CHECK_MSG(has(r.out, flags[i]), "train --help lacks %s", flags[i]);
    run_free(&r);

    r = run_cli("generate", "--help", NULL);
    CHECK_RUN(r, 0, "loom generate --help");
    CHECK(has(r.out, "--prompt") && has(r.out, "--tokens") && has(r.out, "--temperature"));
    run_free(&r);

    r = run_cli("graph", "--help", NULL);
    CHECK_RUN(r, 0, "loom graph --help");
    run_free(&r);
}

// `loom train <args>` must exit 2 with a "usage:" line and `word` on stderr.
#define USAGE_CASE(word, ...)                                                                 \
    do {                                                                                      \
        run_result r_ = run_cli(__VA_ARGS__, NULL);                                           \
        CHECK_RUN(r_, 2, word);                                                               \
        CHECK_MSG(has_line_starting(r_.err, "usage:"), "%s: no usage line: %s", word, r_.err); \
        CHECK_MSG(has(r_.err, word), "%s: stderr lacks it: %s", word, r_.err);                \
        run_free(&r_);                                                                        \
    } while (0)

static void test_usage_errors(void) {
    const char *T = text_path;
#define SMALL "--model", "gpt2", "--layers", "1", "--embd", "32", "--heads", "2", "--ctx", "32"
    USAGE_CASE("--bogus", "train", SMALL, "--data", T, "--bogus");
    USAGE_CASE("--steps", "train", SMALL, "--data", T, "--steps", "abc");
    USAGE_CASE("--steps", "train", SMALL, "--data", T, "--steps", "3x");
    USAGE_CASE("--lr", "train", SMALL, "--data", T, "--lr", "-1");
    USAGE_CASE("--lr", "train", SMALL, "--data", T, "--lr", "nan");
    USAGE_CASE("--batch", "train", SMALL, "--data", T, "--batch", "0");
    USAGE_CASE("--seq", "train", SMALL, "--data", T, "--seq", "-5");
    USAGE_CASE("--beta2", "train", SMALL, "--data", T, "--beta2", "1");
    USAGE_CASE("--data", "train", SMALL);
    USAGE_CASE("--model-dir", "train", "--model", "gpt2", "--model-dir", tu_scratch, "--data", T);
    USAGE_CASE("--model-dir", "train", "--data", T);  // no model at all
    USAGE_CASE("--model-dir", "train", "--model-dir", tu_scratch, "--layers", "2", "--data", T);
    USAGE_CASE("--optimizer", "train", SMALL, "--data", T, "--optimizer", "foo");
    USAGE_CASE("extra", "train", SMALL, "--data", T, "extra");
    USAGE_CASE("--model", "train", "--model", "bert", "--data", T);
    USAGE_CASE("--heads", "train", "--model", "gpt2", "--embd", "30", "--heads", "4", "--data", T);
    USAGE_CASE("--steps", "train", SMALL, "--data", T, "--steps");  // missing value
    USAGE_CASE("--prompt", "generate", SMALL);
    USAGE_CASE("--tokens", "generate", SMALL, "--prompt", "ab", "--tokens", "many");
#undef SMALL
}

// ---- bad inputs -------------------------------------------------------------------------------

// A run that must exit 1 with w1 and w2 (when not NULL) on stderr and nothing on stdout.
static void check_input_error(const char *what, run_result r, const char *w1, const char *w2) {
    CHECK_RUN(r, 1, what);
    const char *words[2] = {w1, w2};
    for (int i = 0; i < 2; i++)
        if (words[i]) CHECK_MSG(has(r.err, words[i]), "%s: stderr lacks '%s': %s", what,
                                words[i], r.err);
    CHECK_MSG(r.out_len == 0, "%s: wrote to stdout: %s", what, r.out);
    run_free(&r);
}

#define INPUT_CASE(what, w1, w2, ...) check_input_error(what, run_cli(__VA_ARGS__, NULL), w1, w2)

static void test_bad_inputs(void) {
    const char *missing = tu_path("no-such-file.bin");
    INPUT_CASE("missing data", missing, NULL, "train", "--model", "gpt2", "--layers", "1",
               "--embd", "32", "--heads", "2", "--data", missing);

    // A model directory without config.json.
    char dir[512];
    snprintf(dir, sizeof dir, "%s", tu_path("empty-model"));
    mkdir(dir, 0777);
    INPUT_CASE("no config.json", "config.json", dir, "train", "--model-dir", dir, "--data",
               text_path);

    // config.json with a syntax error on line 3.
    char bad_json[512], cfg[600];
    snprintf(bad_json, sizeof bad_json, "%s", tu_path("bad-json"));
    mkdir(bad_json, 0777);
    snprintf(cfg, sizeof cfg, "%s/config.json", bad_json);
    const char *json = "{\n  \"model_type\": \"gpt2\",\n  \"n_embd\": 32,,\n  \"n_layer\": 1\n}\n";
    CHECK(tu_write_file(cfg, json, strlen(json)) == 0);
    INPUT_CASE("malformed config.json", "config.json", "line 3", "train", "--model-dir", bad_json,
               "--data", text_path);
    {
        run_result r = run_cli("generate", "--model-dir", bad_json, "--prompt", "a", NULL);
        CHECK_RUN(r, 1, "generate with malformed config.json");
        CHECK_MSG(has(r.err, "column"), "%s", r.err);
        run_free(&r);
    }

    // A valid model directory whose model.safetensors is then cut in half.
    char trunc_dir[512], st_path[600];
    snprintf(trunc_dir, sizeof trunc_dir, "%s", tu_path("truncated"));
    loom_model_config c = loom_model_config_default(LOOM_FAMILY_GPT2);
    c.n_layer = 1;
    c.n_embd = 32;
    c.n_head = 2;
    c.n_kv_head = 2;
    c.head_dim = 16;
    c.n_inner = 128;
    c.max_seq = 32;
    loom_model_t m = NULL;
    CHECK_OK(loom_model_create(&c, 5, &m));
    if (m) {
        CHECK_OK(loom_model_save(m, trunc_dir));
        loom_model_free(m);
        snprintf(st_path, sizeof st_path, "%s/model.safetensors", trunc_dir);
        struct stat sb;
        CHECK(stat(st_path, &sb) == 0 && sb.st_size > 1000);
        CHECK(truncate(st_path, sb.st_size / 2) == 0);
        INPUT_CASE("truncated safetensors", "model.safetensors", NULL, "train", "--model-dir",
                   trunc_dir, "--data", text_path);
    }

    // Token ids up to 200 with a 16-entry vocabulary.
    INPUT_CASE("tokens beyond the vocabulary", "vocabulary", "200", "train", "--model", "gpt2",
               "--vocab", "16", "--layers", "1", "--embd", "32", "--heads", "2", "--ctx", "32",
               "--data", bin_path);
    // --seq longer than the model's context.
    INPUT_CASE("seq beyond the context", "--seq", NULL, "train", "--model", "gpt2", "--layers",
               "1", "--embd", "32", "--heads", "2", "--ctx", "16", "--data", text_path, "--seq",
               "17");
}

// ---- a tiny run -------------------------------------------------------------------------------

// Parse the --log-json lines: exactly `n` objects with step 1..n; returns the first loss.
static double check_json_log(const char *what, const char *out, int n) {
    double first = NAN;
    int lines = 0;
    const char *p = out;
    while (p && *p) {
        const char *nl = strchr(p, '\n');
        size_t len = nl ? (size_t)(nl - p) : strlen(p);
        lines++;
        json_error_t e;
        json_t *j = json_loadb(p, len, 0, &e);
        CHECK_MSG(j && json_is_object(j), "%s: line %d is not a JSON object: %.*s", what, lines,
                  (int)len, p);
        if (j) {
            json_t *step = json_object_get(j, "step"), *loss = json_object_get(j, "loss");
            json_t *tps = json_object_get(j, "tokens_per_s");
            CHECK_MSG(json_is_integer(step) && json_integer_value(step) == lines,
                      "%s: line %d step", what, lines);
            CHECK_MSG(json_is_number(loss), "%s: line %d has no loss", what, lines);
            CHECK_MSG(json_is_number(tps) && json_number_value(tps) > 0, "%s: line %d tokens_per_s",
                      what, lines);
            double l = json_number_value(loss);
            CHECK_MSG(isfinite(l) && l > 0, "%s: line %d loss %g", what, lines, l);
            if (lines == 1) first = l;
            json_decref(j);
        }
        p = nl ? nl + 1 : NULL;
    }
    CHECK_MSG(lines == n, "%s: %d JSON lines, expected %d:\n%s", what, lines, n, out);
    return first;
}

static void test_train_save_generate(void) {
    char save[512];
    snprintf(save, sizeof save, "%s", tu_path("saved"));
    run_result r = run_cli("train", "--model", "gpt2", "--layers", "1", "--embd", "32", "--heads",
                           "2", "--ctx", "32", "--data", text_path, "--steps", "3", "--batch", "2",
                           "--seq", "16", "--lr", "1e-3", "--log-json", "--save", save,
                           "--threads", "1", NULL);
    CHECK_RUN(r, 0, "train");
    double first = check_json_log("train", r.out, 3);
    // Random init (std 0.02) gives near-uniform predictions over 256 bytes: loss ~ ln 256.
    CHECK_MSG(fabs(first - log(256.0)) < 0.3, "first loss %g, expected about ln 256 = %g", first,
              log(256.0));
    run_free(&r);

    char path[600];
    snprintf(path, sizeof path, "%s/config.json", save);
    CHECK_MSG(tu_file_exists(path), "%s missing", path);
    json_error_t e;
    json_t *cfg = json_load_file(path, 0, &e);
    CHECK_MSG(cfg != NULL, "%s: %s", path, e.text);
    if (cfg) {
        CHECK(!strcmp(json_string_value(json_object_get(cfg, "model_type")), "gpt2"));
        CHECK(json_integer_value(json_object_get(cfg, "n_layer")) == 1);
        CHECK(json_integer_value(json_object_get(cfg, "n_embd")) == 32);
        CHECK(json_integer_value(json_object_get(cfg, "n_head")) == 2);
        CHECK(json_integer_value(json_object_get(cfg, "n_positions")) == 32);
        CHECK(json_integer_value(json_object_get(cfg, "vocab_size")) == 256);
        json_decref(cfg);
    }
    snprintf(path, sizeof path, "%s/model.safetensors", save);
    CHECK_MSG(tu_file_exists(path), "%s missing", path);

    // Greedy generation: the prompt, then 5 byte tokens, then a newline; deterministic.
    r = run_cli("generate", "--model-dir", save, "--prompt", "ab", "--tokens", "5",
                "--temperature", "0", "--threads", "1", NULL);
    CHECK_RUN(r, 0, "generate");
    CHECK_MSG(r.out_len == 2 + 5 + 1 && !strncmp(r.out, "ab", 2) && r.out[r.out_len - 1] == '\n',
              "generate output (%zu bytes): '%s'", r.out_len, r.out);
    run_result r2 = run_cli("generate", "--model-dir", save, "--prompt", "ab", "--tokens", "5",
                            "--temperature", "0", "--threads", "1", NULL);
    CHECK_RUN(r2, 0, "generate again");
    CHECK_MSG(r.out_len == r2.out_len && !memcmp(r.out, r2.out, r.out_len),
              "greedy generation differs between runs: '%s' vs '%s'", r.out, r2.out);
    run_free(&r);
    run_free(&r2);

    // The saved directory loads back and trains; its first loss is that of the trained weights on
    // the same first batch: lower than the initial loss.
    r = run_cli("train", "--model-dir", save, "--data", text_path, "--steps", "1", "--batch", "2",
                "--seq", "16", "--log-json", "--threads", "1", NULL);
    CHECK_RUN(r, 0, "train from the saved directory");
    double reloaded = check_json_log("reload", r.out, 1);
    CHECK_MSG(reloaded < first - 1e-3, "loss of the saved model %g, initial %g: the saved "
              "weights are not the trained ones", reloaded, first);
    run_free(&r);

    // LLaMA with grouped-query attention, gradient accumulation, SGD with momentum, and a sample
    // at the end: the prompt and 8 new byte tokens on stdout, the progress on stderr.
    r = run_cli("train", "--model", "llama", "--layers", "1", "--embd", "32", "--heads", "2",
                "--kv-heads", "1", "--ctx", "32", "--data", text_path, "--steps", "2", "--batch",
                "2", "--seq", "8", "--grad-accum", "2", "--optimizer", "sgd", "--momentum", "0.9",
                "--threads", "1", "--sample", "8", "--prompt", "the", NULL);
    CHECK_RUN(r, 0, "llama train with sampling");
    CHECK_MSG(r.out_len == 3 + 8 + 1 && !strncmp(r.out, "the", 3), "sample (%zu bytes): '%s'",
              r.out_len, r.out);
    CHECK_MSG(has(r.err, "step 2/2") && has(r.err, "llama"), "%s", r.err);
    run_free(&r);

    // The graph command prints the annotated graph and the program.
    r = run_cli("graph", "--model", "gpt2", "--layers", "1", "--embd", "32", "--heads", "2",
                "--ctx", "32", "--batch", "1", "--seq", "8", NULL);
    CHECK_RUN(r, 0, "graph");
    CHECK_MSG(has(r.out, "loom.attention") && has(r.out, "h.0.attn") &&
              has(r.out, "\"* k+, n k+ -> * n\"") && has(r.out, "program:"),
              "graph output lacks the graph or the program");
    run_free(&r);
}

// The loss and step of the last JSON line of a --log-json run.
static double last_json_loss(const char *out, long long *step) {
    const char *last = out, *p = out;
    while (p && *p) {
        const char *nl = strchr(p, '\n');
        if (nl && nl[1]) last = nl + 1;
        p = nl ? nl + 1 : NULL;
    }
    json_error_t e;
    json_t *j = json_loadb(last, strcspn(last, "\n"), 0, &e);
    double loss = j ? json_number_value(json_object_get(j, "loss")) : NAN;
    *step = j ? json_integer_value(json_object_get(j, "step")) : -1;
    json_decref(j);
    return loss;
}

// Parallel training from the CLI: a tensor-parallel x data-parallel run with ZeRO saves a
// sharded checkpoint, `loom merge` joins it, and a run resumed on another plan continues with
// the single-device losses.
static void test_parallel_save_merge_resume(void) {
    char shards[600], merged[600];
    snprintf(shards, sizeof shards, "%s/shards", tu_scratch);
    snprintf(merged, sizeof merged, "%s/merged", tu_scratch);
#define MODEL "--model", "gpt2", "--layers", "1", "--embd", "32", "--heads", "2", "--ctx", "32", \
              "--data", text_path, "--batch", "4", "--seq", "16", "--log-json", "--threads", "1"
    run_result single = run_cli("train", MODEL, "--steps", "4", NULL);
    CHECK_MSG(single.code == 0, "single-device run: %d\n%s", single.code, single.err);
    long long step = 0;
    double want = last_json_loss(single.out, &step);
    CHECK(step == 4);
    run_result par = run_cli("train", MODEL, "--steps", "3", "--devices", "4", "--plan-devices",
                             "2", "--policy", "tp", "--zero", "--save-sharded", shards, NULL);
    CHECK_MSG(par.code == 0, "parallel run: %d\n%s", par.code, par.err);
    CHECK_MSG(has(par.err, "device allocation") && has(par.err, "rank3") &&
                  has(par.err, "optimizer state"), "no allocation table:\n%s", par.err);
    run_result merge = run_cli("merge", shards, merged, NULL);
    CHECK_MSG(merge.code == 0, "merge: %d\n%s", merge.code, merge.err);
    char path[700];
    snprintf(path, sizeof path, "%s/model.safetensors", merged);
    CHECK_MSG(access(path, F_OK) == 0, "merge wrote no %s", path);
    run_result resumed = run_cli("train", "--resume", merged, "--data", text_path, "--batch", "4",
                                 "--seq", "16", "--log-json", "--threads", "1", "--steps", "1",
                                 "--devices", "2", NULL);
    CHECK_MSG(resumed.code == 0, "resume: %d\n%s", resumed.code, resumed.err);
    double got = last_json_loss(resumed.out, &step);
    CHECK_MSG(step == 4 && fabs(got - want) <= 1e-5 * fabs(want),
              "resumed step %lld loss %.7f, single device step 4 loss %.7f", step, got, want);
    run_free(&single), run_free(&par), run_free(&merge), run_free(&resumed);
    // Bad parallel settings.
    run_result r = run_cli("train", MODEL, "--devices", "3", "--plan-devices", "2", NULL);
    CHECK_MSG(r.code == 2 && has(r.err, "multiple"), "devices 3 / plan 2: %d %s", r.code, r.err);
    run_free(&r);
    r = run_cli("train", MODEL, "--devices", "2", "--policy", "pipeline", NULL);
    CHECK_MSG(r.code == 2 && has_line_starting(r.err, "usage:"), "bad policy: %d", r.code);
    run_free(&r);
    r = run_cli("train", MODEL, "--devices", "3", "--policy", "tp", NULL);
    CHECK_MSG(r.code == 1 && has(r.err, "h.0.attn"), "tp 3: %d %s", r.code, r.err);
    run_free(&r);
    r = run_cli("train", "--resume", "/nonexistent/ckpt", "--data", text_path, NULL);
    CHECK_MSG(r.code == 1 && has(r.err, "/nonexistent/ckpt"), "bad resume: %d %s", r.code, r.err);
    run_free(&r);
#undef MODEL
}

// Every loss of a --log-json run, in step order; returns how many.
static int json_losses(const char *out, double *losses, int cap) {
    int n = 0;
    for (const char *p = out; p && *p && n < cap; p = strchr(p, '\n') ? strchr(p, '\n') + 1 : NULL) {
        json_error_t e;
        json_t *j = json_loadb(p, strcspn(p, "\n"), 0, &e);
        if (!j) break;
        losses[n++] = json_number_value(json_object_get(j, "loss"));
        json_decref(j);
    }
    return n;
}

// The line of `s` that starts with `prefix` (a copy without the newline), or "" when none.
static void line_starting(const char *s, const char *prefix, char *buf, size_t cap) {
    size_t n = strlen(prefix);
    buf[0] = '\0';
    for (const char *p = s; p && *p; p = strchr(p, '\n') ? strchr(p, '\n') + 1 : NULL)
        if (strncmp(p, prefix, n) == 0) {
            snprintf(buf, cap, "%.*s", (int)strcspn(p, "\n"), p);
            return;
        }
}

// Pipelines from the CLI on the bundled example data: a 2-stage 1F1B run writes a trace with
// sends and receives on both ranks' tracks and prints the single-device losses; a hybrid
// (2 stages x 2-way tensor parallel) run trains and reports memory per rank; bad pipeline
// flags fail naming the flag.
static void test_pipeline(void) {
    const char *licenses = LOOM_TEST_DATA "/../../examples/data/licenses.txt";
    CHECK_MSG(access(licenses, R_OK) == 0, "%s missing", licenses);
    char trace[600];
    snprintf(trace, sizeof trace, "%s/pipeline-trace.json", tu_scratch);
#define MODEL "--model", "gpt2", "--layers", "2", "--embd", "32", "--heads", "2", "--ctx", "32", \
              "--data", licenses, "--batch", "8", "--seq", "16", "--steps", "3", "--threads", "1"
    enum { STEPS = 3 };
    run_result single = run_cli("train", MODEL, "--log-json", NULL);
    CHECK_RUN(single, 0, "single-device run");
    double want[STEPS + 1], got[STEPS + 1];
    CHECK(json_losses(single.out, want, STEPS + 1) == STEPS);

    run_result pp = run_cli("train", MODEL, "--log-json", "--devices", "2", "--pp", "2",
                            "--micro-batches", "4", "--schedule", "1f1b", "--trace", trace, NULL);
    CHECK_RUN(pp, 0, "pp 2, 1f1b");
    check_json_log("pp 2", pp.out, STEPS);  // stdout holds the JSON lines and nothing else
    CHECK(json_losses(pp.out, got, STEPS + 1) == STEPS);
    for (int s = 0; s < STEPS; s++)
        CHECK_MSG(fabs(got[s] - want[s]) <= 1e-5 * fabs(want[s]), "pp 2 step %d loss %.6f, "
                  "single device %.6f", s + 1, got[s], want[s]);
    // The allocation: stage 0 holds the first layer, stage 1 the second; the tied wte both.
    char line[256];
    CHECK_MSG(has(pp.err, "2 pipeline ranks x 1 device per stage, policy pp, schedule 1f1b"),
              "allocation header:\n%s", pp.err);
    char m[64], c0[16], c1[16];
    line_starting(pp.err, "  h.0.attn ", line, sizeof line);
    CHECK_MSG(sscanf(line, "%63s %15s %15s", m, c0, c1) == 3 && !strcmp(c0, "all") &&
                  !strcmp(c1, "-"), "h.0.attn allocation: '%s'\n%s", line, pp.err);
    line_starting(pp.err, "  h.1.attn ", line, sizeof line);
    CHECK_MSG(sscanf(line, "%63s %15s %15s", m, c0, c1) == 3 && !strcmp(c0, "-") &&
                  !strcmp(c1, "all"), "h.1.attn allocation: '%s'\n%s", line, pp.err);
    // The trace: JSON with both ranks' tracks, each with p2p sends and receives.
    json_error_t e;
    json_t *root = json_load_file(trace, 0, &e);
    CHECK_MSG(root != NULL, "%s: %s (line %d)", trace, e.text, e.line);
    json_t *events = json_object_get(root, "traceEvents");
    CHECK(json_is_array(events));
    int on_track[2] = {0, 0}, sends[2] = {0, 0}, recvs[2] = {0, 0};
    for (size_t i = 0; i < json_array_size(events); i++) {
        json_t *ev = json_array_get(events, i);
        json_int_t tid = json_integer_value(json_object_get(ev, "tid"));
        const char *cat = json_string_value(json_object_get(ev, "cat"));
        const char *name = json_string_value(json_object_get(ev, "name"));
        if (tid < 0 || tid > 1 || !cat || !name) continue;
        on_track[tid]++;
        if (!strcmp(cat, "p2p") && !strncmp(name, "send ", 5)) sends[tid]++;
        if (!strcmp(cat, "p2p") && !strncmp(name, "recv ", 5)) recvs[tid]++;
    }
    for (int t = 0; t < 2; t++)
        CHECK_MSG(on_track[t] > 0 && sends[t] > 0 && recvs[t] > 0, "trace track %d: %d events, "
                  "%d sends, %d receives", t, on_track[t], sends[t], recvs[t]);
    json_decref(root);
    run_free(&single), run_free(&pp);

    // Hybrid: --plan-devices 4 over --pp 2 makes tensor-parallel stages without --policy.
    run_result hy = run_cli("train", MODEL, "--devices", "4", "--pp", "2", "--plan-devices", "4",
                            NULL);
    CHECK_RUN(hy, 0, "hybrid pp 2 x tp 2");
    CHECK_MSG(has(hy.err, "2 pipeline ranks x 2 devices per stage, policy hybrid") &&
                  has(hy.err, "trained 3 steps"), "%s", hy.err);
    for (int r = 0; r < 4; r++) {  // memory per rank of the first copy
        char prefix[64];
        snprintf(prefix, sizeof prefix, "  rank %d (pipeline rank %d): parameters ", r, r / 2);
        CHECK_MSG(has_line_starting(hy.err, prefix), "no memory line for rank %d:\n%s", r, hy.err);
    }
    line_starting(hy.err, "step 3/3 loss ", line, sizeof line);
    double last = NAN;
    CHECK_MSG(sscanf(line, "step 3/3 loss %lf", &last) == 1 && fabs(last - want[STEPS - 1]) < 1e-4,
              "hybrid final loss '%s', single device %.6f", line, want[STEPS - 1]);
    run_free(&hy);

    // Bad pipeline flags: a non-zero exit and a message naming the flag.
    struct {
        const char *flag, *a[6];
    } bad[] = {
        {"--schedule", {"--pp", "2", "--schedule", "foo"}},
        {"--pp", {"--pp", "3", "--devices", "2"}},
        {"--pp-layers", {"--pp", "2", "--pp-layers", "1,x"}},
        {"--pp-layers", {"--pp", "2", "--pp-layers", "1,1,1"}},
        {"--plan-devices", {"--pp", "2", "--plan-devices", "3", "--devices", "6"}},
        {"--micro-batches", {"--pp", "2", "--micro-batches", "3"}},
        {"--virtual-stages", {"--pp", "2", "--virtual-stages", "2"}},
        {"--schedule", {"--schedule", "gpipe"}},  // no pipeline
        {"--pp-balance", {"--pp", "2", "--pp-balance", "fast"}},
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        const char **a = bad[i].a;
        run_result r = run_cli("train", MODEL, a[0], a[1], a[2], a[3], a[4], a[5], NULL);
        CHECK_MSG(r.code != 0 && r.code != -1 && has(r.err, bad[i].flag),
                  "%s %s %s %s: exit %d, stderr: %s", a[0], a[1], a[2], a[3], r.code, r.err);
        CHECK_MSG(r.code == 2 && has_line_starting(r.err, "usage:"), "%s %s %s %s: not a usage "
                  "error (%d)", a[0], a[1], a[2], a[3], r.code);
        run_free(&r);
    }
    {  // the valid schedules are listed
        run_result r = run_cli("train", MODEL, "--pp", "2", "--schedule", "foo", NULL);
        CHECK_MSG(has(r.err, "1f1b") && has(r.err, "gpipe") && has(r.err, "1f1b_interleaved"),
                  "%s", r.err);
        run_free(&r);
    }
#undef MODEL
}

int main(void) {
    if (access(LOOM_CLI_PATH, X_OK) != 0) {
        fprintf(stderr, "loom CLI not found at %s\n", LOOM_CLI_PATH);
        return 1;
    }
    if (tu_scratch_make("cli") != 0) {
        fprintf(stderr, "cannot create a scratch directory\n");
        return 1;
    }
    write_fixtures();
    test_help();
    test_usage_errors();
    test_bad_inputs();
    test_train_save_generate();
    test_parallel_save_merge_resume();
    test_pipeline();
    tu_remove_tree(tu_scratch);
    return tu_finish();
}
