// Tests of `loom plan` run as a child process: the table, --json (checked against the library's
// search for the same inputs), --explain, --format megatron, usage errors (exit 2, naming the
// flag), a memory limit nothing fits and a bad model config (exit 1).

#include "cli-testutil.h"
#include "io-testutil.h"

#include "loom/autodist.h"
#include "loom/model.h"

#include <jansson.h>
#include <math.h>
#include <unistd.h>

static char gpt2[512], llama7b[512];

// `loom plan` for GPT-2 small on 8 H100s, batch 64 x 1024, with more arguments.
#define PLAN(...)                                                                           \
    run_cli("plan", "--model-config", gpt2, "--devices", "8", "--device-spec",             \
            "h100-80gb-sxm", "--global-batch", "64", "--seq", "1024", __VA_ARGS__, NULL)

// ---- helpers ----------------------------------------------------------------------------------

// stdout of a run as JSON (NULL, with a failed check, when it is not).
static json_t *parse_json(const run_result *r, const char *what) {
    json_error_t err;
    json_t *j = r->out ? json_loads(r->out, 0, &err) : NULL;
    CHECK_MSG(j && json_is_object(j), "%s: stdout is not a JSON object (%s): %.400s", what,
              j ? "not an object" : err.text, tu_str(r->out));
    if (j && !json_is_object(j)) json_decref(j), j = NULL;
    return j;
}

static int has_number(json_t *o, const char *key) {
    return json_is_number(json_object_get(o, key));
}

static double num(json_t *o, const char *key) { return json_number_value(json_object_get(o, key)); }

static const char *str(json_t *o, const char *key) {
    const char *s = json_string_value(json_object_get(o, key));
    return s ? s : "";
}

// "zero" as 0/1 whether it is written as a boolean or a number (-1 when neither).
static int zero_of(json_t *o) {
    json_t *z = json_object_get(o, "zero");
    if (json_is_boolean(z)) return json_is_true(z);
    return json_is_integer(z) ? (int)json_integer_value(z) : -1;
}

// The integer after `flag ` in a Megatron argument line (-1 when absent).
static long flag_value(const char *line, const char *flag) {
    char pat[96];
    snprintf(pat, sizeof pat, "%s ", flag);
    const char *p = line ? strstr(line, pat) : NULL;
    return p ? strtol(p + strlen(pat), NULL, 10) : -1;
}

// Lines of `s` that start, after spaces, with a decimal number (the table's stage rows).
static int count_stage_rows(const char *s) {
    int n = 0, in_table = 0;
    for (const char *p = s; p && *p; p = strchr(p, '\n') ? strchr(p, '\n') + 1 : NULL) {
        const char *q = p;
        while (*q == ' ') q++;
        if (!strncmp(q, "stage", 5)) in_table = 1;
        else if (in_table && *q >= '0' && *q <= '9') n++;
        else if (in_table) in_table = 0;
    }
    return n;
}

// Whether the first line of `s` contains `part`.
static int first_line_has(const char *s, const char *part) {
    if (!s) return 0;
    size_t len = strcspn(s, "\n");
    const char *p = strstr(s, part);
    return p && (size_t)(p - s) < len;
}

// A usage error: exit 2, the message (stderr's first line; the usage text after it names every
// flag) naming `flag` (and `flag2` when given).
static void expect_usage(run_result r, const char *what, const char *flag, const char *flag2) {
    CHECK_RUN(r, 2, what);
    CHECK_MSG(first_line_has(r.err, flag) && (!flag2 || first_line_has(r.err, flag2)),
              "%s: the message does not name %s%s%s: %s", what, flag, flag2 ? " and " : "",
              flag2 ? flag2 : "", tu_str(r.err));
    run_free(&r);
}

// ---- the plan ---------------------------------------------------------------------------------

static void test_help(void) {
    run_result r = run_cli("plan", "--help", NULL);
    CHECK_RUN(r, 0, "plan --help");
    CHECK_MSG(has(r.out, "usage") && has(r.out, "--model-config") && has(r.out, "--devices") &&
              has(r.out, "--format megatron"), "help text: %s", tu_str(r.out));
    run_free(&r);
}

static void test_table(void) {
    run_result r = PLAN("--mem", "40");
    CHECK_RUN(r, 0, "plan table");
    CHECK_MSG(has(r.out, "stage") && has(r.out, "step") && has(r.out, "tokens/s") &&
              has(r.out, "MFU"), "table lacks stage/step/tokens/s/MFU: %s", tu_str(r.out));
    CHECK_MSG(!has(r.out, "alternatives"), "alternatives without --explain: %s", tu_str(r.out));
    // One table row per virtual stage of the same plan as JSON.
    run_result rj = PLAN("--mem", "40", "--json");
    json_t *j = parse_json(&rj, "plan --json (40 GB)");
    if (j) {
        int stages = (int)(num(j, "pp") * (has_number(j, "chunks") ? num(j, "chunks") : 1));
        CHECK_MSG(count_stage_rows(r.out) == stages, "%d stage rows, %d stages: %s",
                  count_stage_rows(r.out), stages, tu_str(r.out));
    }
    json_decref(j);
    run_free(&rj);
    run_free(&r);
}

// --json has the plan's fields, consistent with each other and with the library's search.
static void test_json(void) {
    run_result r = PLAN("--mem", "40", "--json");
    CHECK_RUN(r, 0, "plan --json");
    json_t *j = parse_json(&r, "plan --json");
    if (!j) {
        run_free(&r);
        return;
    }
    static const char *numbers[] = {"tp", "pp", "dp", "micro_batch_size", "num_micro_batches",
                                    "step_time_s", "tokens_per_s", "mfu", "search_time_s"};
    for (size_t i = 0; i < sizeof numbers / sizeof numbers[0]; i++)
        CHECK_MSG(has_number(j, numbers[i]), "JSON lacks the number '%s'", numbers[i]);
    CHECK_MSG(loom_schedule_from_name(str(j, "schedule")) >= 0, "schedule '%s'",
              str(j, "schedule"));
    CHECK_MSG(loom_recompute_mode_from_name(str(j, "recompute")) >= 0, "recompute '%s'",
              str(j, "recompute"));
    CHECK_MSG(zero_of(j) == 0 || zero_of(j) == 1, "zero is not a boolean");
    int tp = (int)num(j, "tp"), pp = (int)num(j, "pp"), dp = (int)num(j, "dp");
    int mb = (int)num(j, "micro_batch_size"), m = (int)num(j, "num_micro_batches");
    CHECK_MSG(tp >= 1 && pp >= 1 && dp >= 1 && tp * pp * dp == 8, "tp %d x pp %d x dp %d != 8",
              tp, pp, dp);
    CHECK_MSG(dp * mb * m == 64, "dp %d x micro-batch %d x %d != 64", dp, mb, m);
    double step = num(j, "step_time_s");
    double tps = num(j, "tokens_per_s");
    CHECK_MSG(step > 0 && fabs(tps - 64.0 * 1024 / step) <= 1e-6 * tps, "tokens/s %g, step %g s",
              tps, step);
    CHECK_MSG(num(j, "mfu") > 0 && num(j, "mfu") < 1, "mfu %g", num(j, "mfu"));
    CHECK_MSG(num(j, "search_time_s") >= 0, "search time %g", num(j, "search_time_s"));
    // peak_memory_bytes: one object per pipeline rank, each under the 40 GB limit.
    json_t *mem = json_object_get(j, "peak_memory_bytes");
    CHECK_MSG(json_is_array(mem) && (int)json_array_size(mem) == pp, "peak_memory_bytes: %d "
              "entries for pp %d", json_is_array(mem) ? (int)json_array_size(mem) : -1, pp);
    for (size_t i = 0; json_is_array(mem) && i < json_array_size(mem); i++) {
        json_t *e = json_array_get(mem, i);
        double peak = json_is_object(e) ? num(e, "peak_memory_bytes") : -1;
        CHECK_MSG(json_is_object(e) && has_number(e, "peak_memory_bytes") && peak > 0 &&
                  peak <= 40e9, "peak_memory_bytes[%zu]: %g", i, peak);
    }
    // The library finds the same plan for the same inputs (--mem is in GB).
    loom_model_config mc;
    CHECK_OK(loom_model_config_load(gpt2, &mc));
    loom_autodist_config ac = loom_autodist_config_default();
    ac.devices = 8, ac.device_spec = "h100-80gb-sxm", ac.mem_constraint = 40e9;
    ac.global_batch = 64, ac.seq = 1024;
    loom_autodist_t ad = NULL;
    CHECK_OK(loom_autodist_search(&mc, &ac, &ad));
    if (ad) {
        const loom_autodist_plan *p = loom_autodist_best(ad);
        CHECK_MSG(p->tp == tp && p->pp == pp && p->dp == dp && p->micro_batch == mb &&
                  p->zero == zero_of(j) && !strcmp(loom_schedule_name(p->schedule),
                                                   str(j, "schedule")) &&
                  !strcmp(loom_recompute_mode_name(p->recompute), str(j, "recompute")),
                  "CLI tp%d pp%d dp%d mb%d %s %s zero %d; library tp%d pp%d dp%d mb%d %s %s "
                  "zero %d", tp, pp, dp, mb, str(j, "schedule"), str(j, "recompute"),
                  zero_of(j), p->tp, p->pp, p->dp, p->micro_batch,
                  loom_schedule_name(p->schedule), loom_recompute_mode_name(p->recompute),
                  p->zero);
        CHECK_MSG(fabs(p->step_time_s - step) <= 1e-6 * step, "step %g s, library %g s", step,
                  p->step_time_s);
    }
    loom_autodist_free(ad);
    json_decref(j);
    run_free(&r);
}

// Fixed settings on the command line reach the plan.
static void test_fixed_flags(void) {
    run_result r = PLAN("--json", "--tp", "2", "--pp", "2", "--micro-batch", "2", "--recompute",
                        "full", "--zero", "on", "--schedule", "gpipe");
    CHECK_RUN(r, 0, "plan with fixed settings");
    json_t *j = parse_json(&r, "plan with fixed settings");
    if (j)
        CHECK_MSG(num(j, "tp") == 2 && num(j, "pp") == 2 && num(j, "dp") == 2 &&
                  num(j, "micro_batch_size") == 2 && !strcmp(str(j, "recompute"), "full") &&
                  zero_of(j) == 1 && !strcmp(str(j, "schedule"), "gpipe"),
                  "fixed settings not in the plan: %.600s", tu_str(r.out));
    json_decref(j);
    run_free(&r);
    r = PLAN("--json", "--recompute-modules", "attn", "--max-partition-degree", "2");
    CHECK_RUN(r, 0, "plan with recompute modules and max partition degree");
    j = parse_json(&r, "plan --recompute-modules attn --max-partition-degree 2");
    if (j)
        CHECK_MSG(!strcmp(str(j, "recompute_modules"), "attn") && num(j, "tp") <= 2,
                  "recompute_modules '%s', tp %g", str(j, "recompute_modules"), num(j, "tp"));
    json_decref(j);
    run_free(&r);
}

// --op-search: gpt2 small's 12 heads do not split in 8; the per-op search still finds a plan for
// tp 8 (its strategies in the table and the JSON), the family's table alone does not.
static void test_op_search(void) {
    run_result r = PLAN("--tp", "8", "--json");
    CHECK_RUN(r, 0, "plan --tp 8");
    json_t *j = parse_json(&r, "plan --tp 8");
    if (j) CHECK_MSG(has(str(j, "layout"), "attn:"), "layout '%s'", str(j, "layout"));
    json_decref(j);
    run_free(&r);
    r = PLAN("--tp", "8");
    CHECK_RUN(r, 0, "plan --tp 8 (table)");
    CHECK_MSG(has(r.out, "strategies in each 8-device tensor-parallel group: the family's table "
                  "(Megatron) except"), "no strategies line: %s", tu_str(r.out));
    run_free(&r);
    r = PLAN("--tp", "8", "--op-search", "off");
    CHECK_MSG(r.code == 1 && has(r.err, "heads"), "--op-search off, tp 8: exit %d, %s", r.code,
              tu_str(r.err));
    run_free(&r);
}

static void test_explain(void) {
    run_result r = PLAN("--mem", "40", "--explain");
    CHECK_RUN(r, 0, "plan --explain");
    CHECK_MSG(has(r.out, "alternatives") && (has(r.out, "slower") || has(r.out, "GB per device")),
              "--explain lists no alternatives: %s", tu_str(r.out));
    run_free(&r);
}

// Megatron's stage flags for the JSON's pipeline_layers: equal stages need none; else the first
// and last stage's counts when the middle ones are equal (Megatron shares the rest evenly), else
// a comment saying Megatron cannot split them so; interleaving needs equal virtual stages.
static void check_megatron_stages(json_t *j, const char *line, const char *what) {
    int k[256], n = 0, chunks = (int)num(j, "chunks");
    for (const char *p = str(j, "pipeline_layers"); *p && n < 256; p += *p == ',')
        k[n++] = (int)strtol(p, (char **)&p, 10);
    int even = 1, mid = 1;
    for (int s = 1; s < n; s++) even &= k[s] == k[0];
    for (int s = 2; s < n - 1; s++) mid &= k[s] == k[1];
    long first = flag_value(line, "--decoder-first-pipeline-num-layers");
    long last = flag_value(line, "--decoder-last-pipeline-num-layers");
    int comment = has(line, "Megatron cannot split them so");
    if (even || n <= 1)
        CHECK_MSG(first < 0 && last < 0 && !comment, "%s: even stages: %s", what, line);
    else if (chunks == 1 && mid)
        CHECK_MSG(first == k[0] && last == k[n - 1] && !comment, "%s: stages %s: %s", what,
                  str(j, "pipeline_layers"), line);
    else
        CHECK_MSG(first < 0 && comment, "%s: stages %s: %s", what, str(j, "pipeline_layers"),
                  line);
    CHECK_MSG(has(line, "per-op strategies") == (str(j, "layout")[0] != 0), "%s: layout '%s': %s",
              what, str(j, "layout"), line);
}

// --format megatron agrees with --json for the same inputs (fixed_pp: NULL, or --pp's).
static void check_megatron(const char *config, const char *devices, const char *batch,
                           const char *seq, const char *fixed_pp) {
    run_result rj = run_cli("plan", "--model-config", config, "--devices", devices,
                            "--device-spec", "h100-80gb-sxm", "--global-batch", batch, "--seq",
                            seq, "--json", fixed_pp ? "--pp" : NULL, fixed_pp, NULL);
    run_result rm = run_cli("plan", "--model-config", config, "--devices", devices,
                            "--device-spec", "h100-80gb-sxm", "--global-batch", batch, "--seq",
                            seq, "--format", "megatron", fixed_pp ? "--pp" : NULL, fixed_pp,
                            NULL);
    char what[256];
    snprintf(what, sizeof what, "plan --format megatron, %s on %s", config, devices);
    CHECK_RUN(rj, 0, what);
    CHECK_RUN(rm, 0, what);
    json_t *j = parse_json(&rj, what);
    if (j) {
        long tp = flag_value(rm.out, "--tensor-model-parallel-size");
        long pp = flag_value(rm.out, "--pipeline-model-parallel-size");
        CHECK_MSG(tp == (long)num(j, "tp") && pp == (long)num(j, "pp"), "%s: megatron tp %ld pp "
                  "%ld, JSON tp %g pp %g: %s", what, tp, pp, num(j, "tp"), num(j, "pp"),
                  tu_str(rm.out));
        CHECK_MSG(flag_value(rm.out, "--micro-batch-size") == (long)num(j, "micro_batch_size") &&
                  flag_value(rm.out, "--global-batch-size") == atol(batch) &&
                  flag_value(rm.out, "--seq-length") == atol(seq), "%s: %s", what, tu_str(rm.out));
        CHECK_MSG(has(rm.out, "--use-distributed-optimizer") == (zero_of(j) == 1),
                  "%s: zero %d: %s", what, zero_of(j), tu_str(rm.out));
        check_megatron_stages(j, tu_str(rm.out), what);
    }
    json_decref(j);
    run_free(&rj);
    run_free(&rm);
}

static void test_megatron(void) {
    check_megatron(gpt2, "8", "64", "1024", NULL);
    check_megatron(llama7b, "64", "256", "2048", NULL);  // a pipeline: pp > 1
    // Uneven stages: the embeddings and the head weigh on the first and last.
    check_megatron(gpt2, "3", "16", "1024", "3");
    check_megatron(gpt2, "4", "16", "1024", "4");
    check_megatron(gpt2, "8", "16", "1024", "2");
}

// ---- errors -----------------------------------------------------------------------------------

static void test_usage_errors(void) {
    expect_usage(run_cli("plan", "--devices", "8", NULL), "no --model-config", "--model-config",
                 NULL);
    expect_usage(run_cli("plan", "--model-config", gpt2, NULL), "no --devices", "--devices", NULL);
    expect_usage(PLAN("--recompute", "bogus"), "--recompute bogus", "--recompute", NULL);
    expect_usage(PLAN("--zero", "maybe"), "--zero maybe", "--zero", NULL);
    expect_usage(PLAN("--op-search", "perhaps"), "--op-search perhaps", "--op-search", NULL);
    expect_usage(PLAN("--format", "bogus"), "--format bogus", "--format", NULL);
    expect_usage(PLAN("--json", "--format", "megatron"), "--json with --format", "--json",
                 "--format");
    expect_usage(PLAN("--schedule", "infer_pipe"), "--schedule infer_pipe", "--schedule", NULL);
    expect_usage(PLAN("--tp", "two"), "--tp two", "--tp", NULL);
    expect_usage(PLAN("--mem", "-1"), "--mem -1", "--mem", NULL);
    expect_usage(run_cli("plan", "--model-config", gpt2, "--devices", "0", NULL), "--devices 0",
                 "--devices", NULL);
}

static void test_failures(void) {
    // Nothing fits 0.01 GB: exit 1, the smallest plan's needs on stderr.
    run_result r = PLAN("--mem", "0.01");
    CHECK_RUN(r, 1, "plan --mem 0.01");
    CHECK_MSG(has(r.err, "smallest") && has(r.err, "GB"), "stderr: %s", tu_str(r.err));
    run_free(&r);
    r = PLAN("--mem", "0.01", "--json");
    CHECK_RUN(r, 1, "plan --mem 0.01 --json");
    CHECK_MSG(has(r.err, "smallest"), "stderr: %s", tu_str(r.err));
    run_free(&r);
    // A setting the library refuses names it.
    r = PLAN("--tp", "3");
    CHECK_MSG(r.code == 1 && has(r.err, "tp"), "--tp 3 on 8 devices: exit %d: %s", r.code,
              tu_str(r.err));
    run_free(&r);
    // A malformed model config, and a missing one: exit 1 naming the file.
    const char *bad = tu_path("bad-config.json");
    const char *text = "{\"model_type\": \"gpt2\", \"n_layer\": ";
    CHECK(tu_write_file(bad, text, strlen(text)) == 0);
    r = run_cli("plan", "--model-config", bad, "--devices", "8", NULL);
    CHECK_RUN(r, 1, "malformed model config");
    CHECK_MSG(has(r.err, "bad-config.json"), "stderr does not name the file: %s", tu_str(r.err));
    run_free(&r);
    const char *missing = tu_path("missing-config.json");
    r = run_cli("plan", "--model-config", missing, "--devices", "8", NULL);
    CHECK_RUN(r, 1, "missing model config");
    CHECK_MSG(has(r.err, "missing-config.json"), "stderr does not name the file: %s",
              tu_str(r.err));
    run_free(&r);
    r = PLAN("--constraints", tu_path("missing.yaml"));
    CHECK_RUN(r, 1, "missing constraints file");
    CHECK_MSG(has(r.err, "missing.yaml"), "stderr does not name the file: %s", tu_str(r.err));
    run_free(&r);
}

int main(void) {
    if (access(LOOM_CLI_PATH, X_OK) != 0) {
        fprintf(stderr, "loom CLI not found at %s\n", LOOM_CLI_PATH);
        return 1;
    }
    if (tu_scratch_make("cli-plan") != 0) {
        fprintf(stderr, "cannot create a scratch directory\n");
        return 1;
    }
    snprintf(gpt2, sizeof gpt2, "%s/../../examples/configs/gpt2-small.json", LOOM_TEST_DATA);
    snprintf(llama7b, sizeof llama7b, "%s/../../examples/configs/llama-2-7b.json", LOOM_TEST_DATA);
    test_help();
    test_table();
    test_json();
    test_fixed_flags();
    test_explain();
    test_op_search();
    test_megatron();
    test_usage_errors();
    test_failures();
    tu_remove_tree(tu_scratch);
    return tu_finish();
}
