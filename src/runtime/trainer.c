// The one-device trainer: builds the model's training graph, lowers it to a per-rank program,
// binds it to the model's parameters and runs one step per call.

#include "loom/train.h"

#include "core/core.h"
#include "models/family.h"
#include "runtime/runner.h"

#include <math.h>
#include <omp.h>
#include <string.h>

struct loom_trainer {
    loom_model_t model;
    loom_train_config cfg;
    loom_graph_t graph;
    loom_runner *runner;
    int32_t *positions;      // (grad_accum, B, T): 0 .. T-1 in every row
    loom_value tokens, targets, pos, logits;
};

loom_train_config loom_train_config_default(void) {
    loom_train_config c;
    memset(&c, 0, sizeof c);
    c.batch = 4;
    c.seq = 64;
    c.grad_accum = 1;
    c.optimizer = LOOM_OPTIM_ADAMW;
    c.lr = 3e-4f;
    c.beta1 = 0.9f;
    c.beta2 = 0.95f;
    c.eps = 1e-8f;
    c.momentum = 0.0f;
    c.weight_decay = 0.0f;
    c.grad_clip = 1.0f;
    c.loss_scale = 1.0f;
    return c;
}

loom_status loom__train_config_validate(const loom_train_config *c) {
    if (c->batch <= 0 || c->seq <= 0 || c->grad_accum <= 0)
        return loom__error(LOOM_ERR_INVALID, "batch (%d), seq (%d) and grad_accum (%d) must be "
                           "> 0", c->batch, c->seq, c->grad_accum);
    if ((unsigned)c->optimizer >= LOOM_OPTIM_COUNT)
        return loom__error(LOOM_ERR_INVALID, "unknown optimizer %d", (int)c->optimizer);
    if (!(c->lr >= 0) || !(c->eps > 0) || !(c->beta1 >= 0 && c->beta1 < 1) ||
        !(c->beta2 >= 0 && c->beta2 < 1) || !(c->weight_decay >= 0) || !(c->grad_clip >= 0) ||
        !(c->momentum >= 0) || !(c->loss_scale >= 0))
        return loom__error(LOOM_ERR_INVALID, "optimizer settings out of range: lr >= 0, "
                           "0 <= beta1, beta2 < 1, eps > 0, weight_decay >= 0, grad_clip >= 0, "
                           "momentum >= 0");
    return LOOM_OK;
}

loom_status loom_trainer_create(loom_model_t model, const loom_train_config *cfg,
                                loom_trainer_t *out) {
    *out = NULL;
    LOOM_CHECK(loom__train_config_validate(cfg));
    loom_trainer_t t = loom__calloc(1, sizeof *t);
    if (!t) return LOOM_ERR_NOMEM;
    t->model = model;
    t->cfg = *cfg;
    const loom_backend_i *be = loom__backend_cpu();
    be->set_threads(cfg->threads);
    loom_program *prog = NULL;
    loom_status st = loom_model_build_graph(model, LOOM_GRAPH_TRAIN, cfg->batch, cfg->seq, 0,
                                            &t->graph);
    if (st < 0) goto fail;
    if (cfg->recompute) {
        st = loom_graph_recompute(t->graph, cfg->recompute);
        if (st < 0) goto fail;
    }
    loom_lower_options lo = {.train = 1, .micro_batches = cfg->grad_accum};
    st = loom__lower(t->graph, &lo, &prog);
    if (st < 0) goto fail;
    size_t n_floats;
    float *params = loom__model_storage(model, &n_floats);
    LOOM_ASSERT(prog->region_bytes[LOOM_REGION_PARAM] == n_floats * sizeof(float));
    st = loom__runner_create(prog, be, params, &t->runner);
    if (st < 0) goto fail;
    t->runner->profile = cfg->profile;
    t->runner->trace = cfg->trace;
    loom_optim_params optim = {
        .kind = (int)cfg->optimizer, .lr = cfg->lr, .beta1 = cfg->beta1, .beta2 = cfg->beta2,
        .eps = cfg->eps, .weight_decay = cfg->weight_decay, .momentum = cfg->momentum,
        .grad_clip = cfg->grad_clip, .loss_scale = cfg->loss_scale};
    st = loom__runner_set_optimizer(t->runner, &optim);
    if (st < 0) goto fail;
    t->tokens = loom_graph_find(t->graph, "tokens");
    t->targets = loom_graph_find(t->graph, "targets");
    t->pos = loom_graph_find(t->graph, "positions");
    LOOM_ASSERT(t->tokens >= 0 && t->targets >= 0 && t->pos >= 0);
    t->logits = t->graph->nodes[t->graph->values[t->graph->loss].producer].in[0];
    size_t n = (size_t)cfg->grad_accum * (size_t)cfg->batch * (size_t)cfg->seq;
    t->positions = loom__malloc(n * sizeof(int32_t));
    if (!t->positions) {
        st = LOOM_ERR_NOMEM;
        goto fail;
    }
    for (size_t i = 0; i < n; i++) t->positions[i] = (int32_t)(i % (size_t)cfg->seq);
    *out = t;
    return LOOM_OK;
fail:
    loom_trainer_free(t);
    return st;
}

void loom_trainer_free(loom_trainer_t t) {
    if (!t) return;
    loom__runner_free(t->runner);
    loom_graph_destroy(t->graph);
    loom__free(t->positions);
    loom__free(t);
}

static loom_status run(loom_trainer_t t, const int32_t *tokens, const int32_t *targets,
                       int update, loom_step_stats *stats) {
    if (!tokens || !targets)
        return loom__error(LOOM_ERR_INVALID, "loom_trainer_step: tokens and targets are required");
    loom_runner *r = t->runner;
    r->batch_src[t->tokens] = tokens;
    r->batch_src[t->targets] = targets;
    r->batch_src[t->pos] = t->positions;
    r->skip_update = !update;
    double t0 = omp_get_wtime();
    loom_status st = loom__runner_run(r);
    double dt = omp_get_wtime() - t0;
    r->batch_src[t->tokens] = r->batch_src[t->targets] = NULL;
    LOOM_CHECK(st);
    if (stats) {
        stats->loss = (float)(r->loss_sum / t->cfg.grad_accum);
        stats->grad_norm = r->last_grad_norm;
        stats->comm_wait_s = 0;
        stats->seconds = dt;
        stats->tokens_per_s =
            (double)t->cfg.grad_accum * t->cfg.batch * t->cfg.seq / (dt > 0 ? dt : 1e-9);
    }
    return LOOM_OK;
}

loom_status loom_trainer_step(loom_trainer_t t, const int32_t *tokens, const int32_t *targets,
                              loom_step_stats *stats) {
    return run(t, tokens, targets, 1, stats);
}

loom_status loom_trainer_compute_grads(loom_trainer_t t, const int32_t *tokens,
                                       const int32_t *targets, loom_step_stats *stats) {
    return run(t, tokens, targets, 0, stats);
}

loom_status loom_trainer_grad(loom_trainer_t t, const char *name, const float **grad,
                              int64_t *numel) {
    loom_value v = loom_graph_find(t->graph, name);
    if (v < 0 || t->graph->values[v].role != LOOM_ROLE_PARAM || t->graph->values[v].grad < 0)
        return loom__error(LOOM_ERR_NOT_FOUND, "no parameter gradient named '%s'", name);
    *grad = t->runner->ptr[t->graph->values[v].grad];
    if (numel) *numel = loom__value_numel(t->graph, v);
    return LOOM_OK;
}

const float *loom_trainer_logits(loom_trainer_t t) { return t->runner->ptr[t->logits]; }

loom_memory_stats loom_trainer_memory(loom_trainer_t t) {
    return loom__runner_memory(t->runner);
}

void loom_trainer_profile(loom_trainer_t t, FILE *f) {
    const loom_runner *r = t->runner;
    double total = 0;
    for (int k = 0; k < LOOM_INSTR_COUNT; k++) total += r->instr_seconds[k];
    int order[2 * LOOM_OP_COUNT], n = 0;
    for (int i = 0; i < 2 * LOOM_OP_COUNT; i++) {
        double s = r->op_seconds[i / 2][i % 2];
        if (s > 0) order[n++] = i;
    }
    for (int i = 1; i < n; i++) {
        int x = order[i], j = i - 1;
        while (j >= 0 && r->op_seconds[order[j] / 2][order[j] % 2] < r->op_seconds[x / 2][x % 2])
            order[j + 1] = order[j], j--;
        order[j + 1] = x;
    }
    fprintf(f, "%-28s %10s %7s\n", "op", "seconds", "share");
    for (int i = 0; i < n; i++) {
        double s = r->op_seconds[order[i] / 2][order[i] % 2];
        fprintf(f, "%-19s %-8s %10.4f %6.1f%%\n", loom__op_def((loom_op)(order[i] / 2))->signature,
                order[i] % 2 ? "backward" : "forward", s, 100 * s / total);
    }
    for (int k = 0; k < LOOM_INSTR_COUNT; k++) {
        if (k == LOOM_INSTR_FORWARD || k == LOOM_INSTR_BACKWARD || r->instr_seconds[k] <= 0) continue;
        fprintf(f, "%-28s %10.4f %6.1f%%\n", loom__instr_name((loom_instr_kind)k),
                r->instr_seconds[k], 100 * r->instr_seconds[k] / total);
    }
}

loom_status loom_trainer_write_trace(loom_trainer_t t, const char *path) {
    int rank = 0;
    return loom__trace_write(path, &t->runner, &rank, 1);
}

loom_status loom_trainer_dump(loom_trainer_t t, FILE *f) {
    LOOM_CHECK(loom_graph_dump(t->graph, f));
    loom__program_dump(t->runner->prog, f);
    return LOOM_OK;
}
