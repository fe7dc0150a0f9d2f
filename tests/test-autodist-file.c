// Autodist plan files: a searched plan saved and loaded back is the same plan (settings, stages,
// memory); loading refuses another model, another job, edited ops and malformed files, naming
// the file and what differs; a loaded plan runs a parallel step; loom plan --save-plan and
// --load-plan.

#include "autodist-testutil.h"
#include "cli-testutil.h"
#include "parity.h"

#include "loom/parallel.h"

#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

// ---- round trips ------------------------------------------------------------------------------

static void same_plan(const loom_autodist_plan *a, const loom_autodist_plan *b, const char *what) {
    CHECK_MSG(a->tp == b->tp && a->pp == b->pp && a->dp == b->dp && a->chunks == b->chunks,
              "%s: tp %d/%d pp %d/%d dp %d/%d chunks %d/%d", what, a->tp, b->tp, a->pp, b->pp,
              a->dp, b->dp, a->chunks, b->chunks);
    CHECK_MSG(a->micro_batch == b->micro_batch && a->num_micro_batches == b->num_micro_batches,
              "%s: micro-batch %d x %d, loaded %d x %d", what, a->micro_batch,
              a->num_micro_batches, b->micro_batch, b->num_micro_batches);
    CHECK_MSG(a->schedule == b->schedule && a->recompute == b->recompute && a->zero == b->zero &&
              a->precision == b->precision, "%s: schedule, recompute, zero or precision", what);
    CHECK_MSG(!strcmp(a->pipeline_layers, b->pipeline_layers), "%s: pipeline_layers '%s' / '%s'",
              what, a->pipeline_layers, b->pipeline_layers);
    CHECK_MSG(!strcmp(a->recompute_spec, b->recompute_spec), "%s: recompute_spec '%s' / '%s'",
              what, a->recompute_spec, b->recompute_spec);
    CHECK_MSG(!strcmp(a->layout, b->layout), "%s: layout '%s' / '%s'", what, a->layout,
              b->layout);
    CHECK_MSG(loom_constraints_count(a->constraints) == loom_constraints_count(b->constraints),
              "%s: %d / %d constraints", what, loom_constraints_count(a->constraints),
              loom_constraints_count(b->constraints));
    CHECK_MSG(a->n_stages == b->n_stages, "%s: %d stages, loaded %d", what, a->n_stages,
              b->n_stages);
    for (int s = 0; s < a->n_stages && s < b->n_stages; s++) {
        const loom_autodist_stage *x = &a->stages[s], *y = &b->stages[s];
        CHECK_MSG(x->first_layer == y->first_layer && x->n_layers == y->n_layers &&
                  x->recompute_layers == y->recompute_layers && x->pipe_rank == y->pipe_rank &&
                  x->chunk == y->chunk, "%s: stage %d", what, s);
    }
    CHECK_MSG(a->peak_memory_bytes == b->peak_memory_bytes, "%s: peak %zu, loaded %zu", what,
              a->peak_memory_bytes, b->peak_memory_bytes);
    for (int r = 0; r < a->pp && r < b->pp; r++)
        CHECK_MSG(a->memory[r].peak == b->memory[r].peak, "%s: rank %d peak %zu, loaded %zu",
                  what, r, a->memory[r].peak, b->memory[r].peak);
    CHECK_MSG(fabs(a->step_time_s - b->step_time_s) <= 1e-9 * a->step_time_s,
              "%s: step %.9g s, loaded %.9g s", what, a->step_time_s, b->step_time_s);
}

static int files_equal(const char *x, const char *y) {
    size_t n, m;
    uint8_t *a = tu_read_file(x, &n), *b = tu_read_file(y, &m);
    int same = a && b && n == m && !memcmp(a, b, n);
    free(a), free(b);
    return same;
}

// Search, save to `name`, load: the same plan, which every output function accepts and which
// saves to the same file. Returns the loaded result.
static loom_autodist_t round_trip(const loom_model_config *mc, const loom_autodist_config *ac,
                                  const char *name) {
    loom_autodist_t found = NULL, loaded = NULL;
    CHECK_OK(loom_autodist_search(mc, ac, &found));
    if (!found) return NULL;
    const char *path = tu_path(name);
    CHECK_OK(loom_autodist_save(found, path));
    CHECK_OK(loom_autodist_load(path, mc, ac, &loaded));
    if (loaded) {
        same_plan(loom_autodist_best(found), loom_autodist_best(loaded), name);
        CHECK(loom_autodist_n_alternatives(loaded) == 0);
        CHECK(loom_autodist_alternative(loaded, 0) == NULL);
        CHECK(loom_autodist_get_config(loaded)->devices == ac->devices);
        CHECK(loom_autodist_model(loaded)->n_layer == mc->n_layer);
        FILE *sink = fopen("/dev/null", "w");
        if (sink) {
            loom_autodist_print(loaded, sink, 1);
            CHECK_OK(loom_autodist_write_json(loaded, sink));
            loom_autodist_print_megatron(loaded, sink);
            fclose(sink);
        }
        const char *again = tu_path("again.json");
        CHECK_OK(loom_autodist_save(loaded, again));
        CHECK_MSG(files_equal(path, again), "%s: saving the loaded plan changed the file", name);
    }
    loom_autodist_free(found);
    return loaded;
}

// The loaded plan runs: loom_autodist_apply, loom_parallelize and one step.
static void runs(const loom_model_config *mc, const loom_autodist_config *ac,
                 loom_autodist_t loaded, const char *what) {
    if (!loaded) return;
    loom_model_t model = NULL;
    CHECK_OK(loom_model_create(mc, 7, &model));
    loom_compute_config cc = loom_compute_config_default();
    loom_train_config tc = parity_train_config(ac->global_batch, ac->seq);
    loom_autodist_apply(loom_autodist_best(loaded), ac, &cc, &tc);
    loom_parallel_t par = NULL;
    CHECK_OK(loom_parallelize(model, &cc, &tc, &par));
    int n = ac->global_batch * ac->seq;
    int32_t *tokens = malloc((size_t)n * sizeof *tokens), *targets = malloc((size_t)n * 4);
    for (int i = 0; i < n; i++) tokens[i] = (i * 7) % 256, targets[i] = (i * 7 + 7) % 256;
    loom_step_stats st = {0};
    if (par) CHECK_OK(loom_parallel_step(par, tokens, targets, &st));
    CHECK_MSG(!par || (isfinite(st.loss) && st.loss > 0), "%s: loss %g", what, st.loss);
    free(tokens), free(targets);
    loom_parallel_free(par);
    loom_model_free(model);
}

static void round_trips(void) {
    loom_model_config gpt2 = small_model(LOOM_FAMILY_GPT2);
    loom_autodist_config ac = small_job(1);  // everything searched
    loom_autodist_free(round_trip(&gpt2, &ac, "one.json"));

    ac = small_job(2);
    ac.pp = 2;
    loom_autodist_t a = round_trip(&gpt2, &ac, "pp2.json");
    CHECK(a && loom_autodist_best(a)->pp == 2);
    runs(&gpt2, &ac, a, "pp2");
    loom_autodist_free(a);

    ac = small_job(2);
    ac.tp = 2;
    a = round_trip(&gpt2, &ac, "tp2.json");
    CHECK(a && loom_autodist_best(a)->tp == 2);
    runs(&gpt2, &ac, a, "tp2");
    loom_autodist_free(a);

    // Interleaved pipeline over data-parallel copies with ZeRO and full recomputation.
    ac = small_job(4);
    ac.pp = 2, ac.dp = 2, ac.zero = 1, ac.recompute = LOOM_RECOMPUTE_FULL;
    ac.schedule = LOOM_SCHEDULE_1F1B_INTERLEAVED;
    a = round_trip(&gpt2, &ac, "interleaved.json");
    CHECK(a && loom_autodist_best(a)->chunks == 2 && loom_autodist_best(a)->zero == 1);
    runs(&gpt2, &ac, a, "interleaved");
    loom_autodist_free(a);

    // Per-op strategies other than the family's table (replicated attention: GPT-2's 6 heads do
    // not split in 4), with pipeline stages.
    ac = small_job(8);
    ac.tp = 4, ac.pp = 2;
    a = round_trip(&gpt2, &ac, "layout.json");
    CHECK(a && loom_autodist_best(a)->tp == 4 &&
          strstr(loom_autodist_best(a)->layout, "attn: replicated"));
    runs(&gpt2, &ac, a, "layout");
    loom_autodist_free(a);
    // Long sequences of a narrow LLaMA: every op split by batch inside the tp group.
    loom_model_config narrow = small_model(LOOM_FAMILY_LLAMA);
    narrow.n_embd = 128, narrow.n_head = 4, narrow.n_kv_head = 2, narrow.head_dim = 32;
    narrow.n_inner = 512;
    ac = small_job(2);
    ac.tp = 2, ac.micro_batch = 8, ac.seq = 256;
    a = round_trip(&narrow, &ac, "layout-batch.json");
    CHECK(a && strstr(loom_autodist_best(a)->layout, "self_attn: split b"));
    loom_autodist_free(a);

    // The user's recompute modules, on a LLaMA-family model.
    loom_model_config llama = small_model(LOOM_FAMILY_LLAMA);
    ac = small_job(1);
    ac.recompute_modules = "attn";
    a = round_trip(&llama, &ac, "modules.json");
    CHECK(a && !strcmp(loom_autodist_best(a)->recompute_spec, "attn"));
    CHECK(a && !strcmp(loom_autodist_get_config(a)->recompute_modules, "attn"));
    loom_autodist_free(a);
}

// ---- editing files ----------------------------------------------------------------------------

// A copy of plan file `src` named `name` with field sec.key set to `value` (stolen; NULL
// removes it). sec "ops" edits ops[index] (key NULL: removes that op); "" edits the top level.
static const char *edited(const char *src, const char *name, const char *sec, int index,
                          const char *key, json_t *value) {
    json_t *root = json_load_file(src, 0, NULL);
    CHECK(root != NULL);
    json_t *obj = sec[0] ? json_object_get(root, sec) : root;
    if (json_is_array(obj)) {
        size_t i = index < 0 ? json_array_size(obj) - 1 : (size_t)index;
        if (!key) json_array_remove(obj, i);
        obj = json_array_get(obj, i);
    }
    if (key && value) json_object_set_new(obj, key, value);
    else if (key) json_object_del(obj, key);
    const char *path = tu_path(name);
    CHECK(json_dump_file(root, path, JSON_INDENT(2)) == 0);
    json_decref(root);
    return path;
}

static void load_fails(const char *path, const loom_model_config *mc,
                       const loom_autodist_config *ac, loom_status code, const char *w1,
                       const char *w2, const char *w3) {
    loom_autodist_t a = NULL;
    CHECK_ERR(loom_autodist_load(path, mc, ac, &a), code, w1, w2);
    CHECK_MSG(tu_has_text(loom_last_error(), w3), "message lacks '%s': %s", w3,
              loom_last_error());
    CHECK_MSG(tu_has_text(loom_last_error(), path), "message lacks the file: %s",
              loom_last_error());
    CHECK(a == NULL);
    loom_autodist_free(a);
}

// Another model or job than the file's.
static void stale_plans(const char *plan) {
    loom_model_config gpt2 = small_model(LOOM_FAMILY_GPT2), m = gpt2;
    loom_autodist_config ac = small_job(1);
    const char *fix = "re-run the search, or pass the model the plan was made for";
    m.n_layer = 6;
    load_fails(plan, &m, &ac, LOOM_ERR_INVALID, "n_layer: file 4, model 6", fix, NULL);
    m = gpt2;
    m.n_embd = 192, m.head_dim = 32, m.n_inner = 768;
    load_fails(plan, &m, &ac, LOOM_ERR_INVALID, "n_embd: file 384, model 192", fix, NULL);
    m = small_model(LOOM_FAMILY_LLAMA);
    load_fails(plan, &m, &ac, LOOM_ERR_INVALID, "model_type: file gpt2, model llama", fix, NULL);
    ac.devices = 2;
    load_fails(plan, &gpt2, &ac, LOOM_ERR_INVALID, "devices: file 1, config 2", NULL, NULL);
    ac = small_job(1);
    ac.global_batch = 16;
    load_fails(plan, &gpt2, &ac, LOOM_ERR_INVALID, "global_batch: file 8, config 16", NULL, NULL);
    ac = small_job(1);
    ac.seq = 64;
    load_fails(plan, &gpt2, &ac, LOOM_ERR_INVALID, "seq: file 32, config 64", NULL, NULL);
}

// Edited ops: the first that differs is named with its index, both keys, splits or stages.
static void edited_ops(const char *plan) {
    loom_model_config gpt2 = small_model(LOOM_FAMILY_GPT2);
    loom_autodist_config ac = small_job(1);
    json_t *root = json_load_file(plan, 0, NULL);
    json_t *op5 = json_array_get(json_object_get(root, "ops"), 5);
    char original[128], want[200];
    snprintf(original, sizeof original, "'%s'",
             json_string_value(json_object_get(op5, "module")));
    size_t n_ops = json_array_size(json_object_get(root, "ops"));
    json_decref(root);
    const char *path = edited(plan, "renamed.json", "ops", 5, "module", json_string("h.0.renamed"));
    load_fails(path, &gpt2, &ac, LOOM_ERR_INVALID, "op 5: the file has", "'h.0.renamed'",
               original);
    path = edited(plan, "short.json", "ops", -1, NULL, NULL);
    snprintf(want, sizeof want, "op %zu: the file ends after %zu ops", n_ops - 1, n_ops - 1);
    load_fails(path, &gpt2, &ac, LOOM_ERR_INVALID, want, NULL, NULL);
    path = edited(plan, "split.json", "ops", 3, "split", json_pack("[i, i]", 0, 0));
    load_fails(path, &gpt2, &ac, LOOM_ERR_INVALID, "op 3 (",
               "the file splits it [0, 0] but the plan now splits it \"replicate\"", NULL);
    path = edited(plan, "stage.json", "ops", 2, "stage", json_integer(1));
    load_fails(path, &gpt2, &ac, LOOM_ERR_INVALID, "op 2 (", "pipeline stage 1", NULL);
}

// Malformed files: LOOM_ERR_FORMAT naming the file and the field.
static void malformed(const char *plan) {
    loom_model_config gpt2 = small_model(LOOM_FAMILY_GPT2);
    loom_autodist_config ac = small_job(1);
    const char *path = tu_path("broken.json");
    const char *text = "{\"format\": \"loom-autodist-plan\",\n \"job\": {";
    CHECK(tu_write_file(path, text, strlen(text)) == 0);
    load_fails(path, &gpt2, &ac, LOOM_ERR_FORMAT, "line", NULL, NULL);
    load_fails(tu_path("absent.json"), &gpt2, &ac, LOOM_ERR_IO, NULL, NULL, NULL);
    path = edited(plan, "no-tp.json", "settings", 0, "tp", NULL);
    load_fails(path, &gpt2, &ac, LOOM_ERR_FORMAT, "'settings.tp' is missing", NULL, NULL);
    path = edited(plan, "no-job.json", "", 0, "job", NULL);
    load_fails(path, &gpt2, &ac, LOOM_ERR_FORMAT, "'job' is missing", NULL, NULL);
    path = edited(plan, "pp-text.json", "settings", 0, "pp", json_string("two"));
    load_fails(path, &gpt2, &ac, LOOM_ERR_FORMAT, "'settings.pp' must be an integer", NULL, NULL);
    path = edited(plan, "zero-int.json", "settings", 0, "zero", json_integer(1));
    load_fails(path, &gpt2, &ac, LOOM_ERR_FORMAT, "'settings.zero' must be true or false", NULL,
               NULL);
    path = edited(plan, "sched.json", "settings", 0, "schedule", json_string("zigzag"));
    load_fails(path, &gpt2, &ac, LOOM_ERR_FORMAT, "'settings.schedule'", "zigzag", NULL);
    path = edited(plan, "layers.json", "settings", 0, "pipeline_layers", json_pack("[i, i]", 2, 2));
    load_fails(path, &gpt2, &ac, LOOM_ERR_FORMAT, "'settings.pipeline_layers' must list 1 number",
               NULL, NULL);
    path = edited(plan, "op-split.json", "ops", 2, "split", json_integer(7));
    load_fails(path, &gpt2, &ac, LOOM_ERR_FORMAT, "'ops[2].split'", NULL, NULL);
    path = edited(plan, "op-module.json", "ops", 4, "module", NULL);
    load_fails(path, &gpt2, &ac, LOOM_ERR_FORMAT, "'ops[4].module' is missing", NULL, NULL);
    path = edited(plan, "format.json", "", 0, "format", json_string("something-else"));
    load_fails(path, &gpt2, &ac, LOOM_ERR_FORMAT, "'format'", NULL, NULL);
    path = edited(plan, "tp3.json", "settings", 0, "tp", json_integer(-3));
    load_fails(path, &gpt2, &ac, LOOM_ERR_FORMAT, "'settings.tp' must be an integer >= 1", NULL,
               NULL);
}

// Settings that contradict each other or the job: LOOM_ERR_INVALID naming the file and them.
static void inconsistent(const char *plan) {
    loom_model_config gpt2 = small_model(LOOM_FAMILY_GPT2);
    loom_autodist_config ac = small_job(1);
    const char *path = edited(plan, "tp2-on-1.json", "settings", 0, "tp", json_integer(2));
    load_fails(path, &gpt2, &ac, LOOM_ERR_INVALID, "tp=2", "1 devices", NULL);
    path = edited(plan, "chunks.json", "settings", 0, "chunks", json_integer(2));
    path = edited(path, "chunks2.json", "settings", 0, "pipeline_layers",
                  json_pack("[i, i]", 2, 2));
    load_fails(path, &gpt2, &ac, LOOM_ERR_INVALID, "'settings.chunks' is 2", "1f1b_interleaved",
               NULL);
    path = edited(plan, "batch.json", "settings", 0, "num_micro_batches", json_integer(3));
    load_fails(path, &gpt2, &ac, LOOM_ERR_INVALID, "is not the global batch 8", NULL, NULL);
    path = edited(plan, "modules.json", "settings", 0, "recompute_modules", json_string("attn"));
    path = edited(path, "modules-full.json", "settings", 0, "recompute", json_string("full"));
    load_fails(path, &gpt2, &ac, LOOM_ERR_INVALID, "'settings.recompute' must be none", NULL,
               NULL);
}

// A plan file's layout (the ops whose strategy is not the family table's): malformed entries
// are format errors, an unknown op is named, and a layout removed or changed by hand no longer
// makes the file's ops.
static void edited_layout(void) {
    loom_model_config gpt2 = small_model(LOOM_FAMILY_GPT2);
    loom_autodist_config ac = small_job(4);
    ac.tp = 4;
    loom_autodist_t a = NULL;
    CHECK_OK(loom_autodist_search(&gpt2, &ac, &a));
    if (!a) return;
    const char *plan = tu_path("layout-edits.json");
    CHECK_OK(loom_autodist_save(a, plan));
    loom_autodist_free(a);
    json_t *root = json_load_file(plan, 0, NULL);
    json_t *layout = json_object_get(json_object_get(root, "settings"), "layout");
    CHECK_MSG(json_array_size(layout) > 0, "the tp 4 plan has no layout to edit");
    json_decref(root);
    const char *path = edited(plan, "layout-text.json", "settings", 0, "layout",
                              json_string("replicate attention"));
    load_fails(path, &gpt2, &ac, LOOM_ERR_FORMAT, "'settings.layout' must be a list", NULL, NULL);
    path = edited(plan, "layout-entry.json", "settings", 0, "layout", json_pack("[i]", 3));
    load_fails(path, &gpt2, &ac, LOOM_ERR_FORMAT, "'settings.layout[0]' must be an object", NULL,
               NULL);
    json_t *bad = json_pack("[{s:s, s:s, s:s}]", "module", "attn", "op", "loom.attention",
                            "split", "follow");
    path = edited(plan, "layout-split.json", "settings", 0, "layout", bad);
    load_fails(path, &gpt2, &ac, LOOM_ERR_FORMAT, "'settings.layout[0].split'", NULL, NULL);
    json_t *unknown = json_pack("[{s:s, s:s, s:s}]", "module", "attn", "op", "loom.nope",
                                "split", "replicate");
    path = edited(plan, "layout-op.json", "settings", 0, "layout", unknown);
    load_fails(path, &gpt2, &ac, LOOM_ERR_INVALID, "unknown op 'loom.nope'", NULL, NULL);
    // Without its layout the table cannot split GPT-2's 6 heads in 4.
    path = edited(plan, "layout-gone.json", "settings", 0, "layout", json_array());
    load_fails(path, &gpt2, &ac, LOOM_ERR_SHAPE, "heads", NULL, NULL);
    // The attention split by batch instead: op by op, the file's splits are no longer the plan's.
    json_t *other = json_pack("[{s:s, s:s, s:[i, i]}]", "module", "attn", "op", "loom.attention",
                              "split", 0, 0);
    path = edited(plan, "layout-other.json", "settings", 0, "layout", other);
    load_fails(path, &gpt2, &ac, LOOM_ERR_INVALID, "the file splits it", "but the plan now "
               "splits it", NULL);
}

// Full recomputation of a hand-picked number of layers per pipeline rank: the file's counts,
// not the estimate's choice.
static void preset_recompute(void) {
    loom_model_config gpt2 = small_model(LOOM_FAMILY_GPT2);
    loom_autodist_config ac = small_job(2);
    ac.pp = 2, ac.recompute = LOOM_RECOMPUTE_NONE, ac.schedule = LOOM_SCHEDULE_1F1B;
    loom_autodist_t a = NULL;
    CHECK_OK(loom_autodist_search(&gpt2, &ac, &a));
    if (!a) return;
    const char *plan = tu_path("preset.json");
    CHECK_OK(loom_autodist_save(a, plan));
    loom_autodist_free(a);
    const char *p1 = edited(plan, "preset-full.json", "settings", 0, "recompute",
                            json_string("full"));
    const char *p2 = edited(p1, "preset-full2.json", "settings", 0, "recompute_layers",
                            json_pack("[i, i]", 1, 0));
    CHECK_OK(loom_autodist_load(p2, &gpt2, &ac, &a));
    if (!a) return;
    const loom_autodist_plan *p = loom_autodist_best(a);
    CHECK(p->recompute == LOOM_RECOMPUTE_FULL);
    CHECK_MSG(p->stages[0].recompute_layers == 1 && p->stages[1].recompute_layers == 0,
              "recompute_layers %d, %d", p->stages[0].recompute_layers,
              p->stages[1].recompute_layers);
    CHECK_MSG(!strcmp(p->recompute_spec, "h.0"), "recompute_spec '%s'", p->recompute_spec);
    loom_autodist_free(a);
}

// A plan over the memory limit: LOOM_ERR_NOMEM saying how much, the result still returned.
static void over_the_limit(const char *plan) {
    loom_model_config gpt2 = small_model(LOOM_FAMILY_GPT2);
    loom_autodist_config ac = small_job(1);
    ac.mem_constraint = 1e6;
    loom_autodist_t a = NULL;
    CHECK_ERR(loom_autodist_load(plan, &gpt2, &ac, &a), LOOM_ERR_NOMEM, "GB per device",
              "limit");
    CHECK(a != NULL && !loom_autodist_best(a)->fits);
    loom_autodist_free(a);
}

// ---- the CLI ----------------------------------------------------------------------------------

static void cli(void) {
    loom_model_config gpt2 = small_model(LOOM_FAMILY_GPT2);
    char *text = loom_model_config_to_json(&gpt2);
    const char *config = tu_path("config.json"), *spec = cpu_like_spec();
    CHECK(text && tu_write_file(config, text, strlen(text)) == 0);
    free(text);
    char plan[512];
    snprintf(plan, sizeof plan, "%s", tu_path("cli-plan.json"));
#define PLAN_ARGS "plan", "--model-config", config, "--device-spec", spec, "--global-batch", \
                  "8", "--seq", "32", "--roofline", "--mem", "1000"
    run_result r = run_cli(PLAN_ARGS, "--devices", "2", "--pp", "2", "--save-plan", plan, NULL);
    CHECK_RUN(r, 0, "plan --save-plan");
    CHECK_MSG(has(r.err, "wrote the plan to") && tu_file_exists(plan), "stderr: %s", r.err);
    run_free(&r);
    r = run_cli(PLAN_ARGS, "--devices", "2", "--load-plan", plan, "--json", NULL);
    CHECK_RUN(r, 0, "plan --load-plan --json");
    json_t *j = json_loads(r.out, 0, NULL);
    CHECK_MSG(j && json_integer_value(json_object_get(j, "pp")) == 2 &&
              json_array_size(json_object_get(j, "alternatives")) == 0, "stdout: %s", r.out);
    json_decref(j);
    run_free(&r);
    r = run_cli(PLAN_ARGS, "--devices", "2", "--load-plan", plan, NULL);
    CHECK_RUN(r, 0, "plan --load-plan");
    CHECK_MSG(has(r.out, "tp=1 pp=2 dp=1"), "stdout: %s", r.out);
    run_free(&r);
    r = run_cli(PLAN_ARGS, "--devices", "4", "--load-plan", plan, NULL);
    CHECK_RUN(r, 1, "plan --load-plan on other devices");
    CHECK_MSG(has(r.err, "devices: file 2, config 4") && has(r.err, plan), "stderr: %s", r.err);
    run_free(&r);
    r = run_cli(PLAN_ARGS, "--devices", "2", "--load-plan", plan, "--save-plan", plan, NULL);
    CHECK_RUN(r, 2, "--load-plan with --save-plan");
    CHECK_MSG(has(r.err, "exclude each other"), "stderr: %s", r.err);
    run_free(&r);
    r = run_cli(PLAN_ARGS, "--devices", "2", "--load-plan", plan, "--tp", "2", NULL);
    CHECK_RUN(r, 2, "--load-plan with --tp");
    CHECK_MSG(has(r.err, "--tp: the plan file fixes the settings"), "stderr: %s", r.err);
    run_free(&r);
#undef PLAN_ARGS
}

int main(void) {
    if (tu_scratch_make("autodist-file") != 0) {
        fprintf(stderr, "cannot create a scratch directory\n");
        return 1;
    }
    round_trips();
    char plan[512];  // gpt2, 4 layers, one device
    snprintf(plan, sizeof plan, "%s", tu_path("one.json"));
    stale_plans(plan);
    edited_ops(plan);
    malformed(plan);
    inconsistent(plan);
    preset_recompute();
    edited_layout();
    over_the_limit(plan);
    cli();
    tu_remove_tree(tu_scratch);
    return tu_finish();
}
