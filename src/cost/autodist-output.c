// What a plan search found, for people (a table per stage), for programs (JSON) and for
// Megatron-LM users (its command-line arguments).

#include "cost/autodist-impl.h"

#include "core/core.h"

#include <jansson.h>
#include <string.h>

static double gb(size_t bytes) { return (double)bytes / 1e9; }

// "4 x 8 (tp x dp)": the devices of one pipeline rank's stages.
static void plan_line(const loom_autodist_plan *p, char *buf, size_t cap) {
    int n = snprintf(buf, cap, "tp=%d pp=%d dp=%d", p->tp, p->pp, p->dp);
    n += snprintf(buf + n, cap - (size_t)n, ", micro-batch %d x %d", p->micro_batch,
                  p->num_micro_batches);
    if (p->pp > 1)
        n += snprintf(buf + n, cap - (size_t)n, ", %s%s", loom_schedule_name(p->schedule),
                      p->chunks > 1 ? " (2 chunks)" : "");
    n += snprintf(buf + n, cap - (size_t)n, ", recompute %s, zero %s",
                  loom_recompute_mode_name(p->recompute), p->zero ? "on" : "off");
    if (p->layout && p->layout[0] && (size_t)n < cap)
        snprintf(buf + n, cap - (size_t)n, ", ops: %s", p->layout);
}

// The per-op strategies of a stage's tensor-parallel group.
static void print_strategies(const loom_autodist_plan *p, FILE *f) {
    if (p->tp == 1) return;
    fprintf(f, "  strategies in each %d-device tensor-parallel group: the family's table "
            "(Megatron)%s%s\n", p->tp, p->layout && p->layout[0] ? " except " : "",
            p->layout ? p->layout : "");
}

static void print_stages(const loom_autodist_plan *p, FILE *f) {
    fprintf(f, "  %-5s %-5s %-13s %-10s %9s %9s %9s %9s %9s %9s %8s %8s\n", "stage", "rank",
            "layers", "mesh", "params", "grads", "optim", "activ", "other", "peak", "fwd ms",
            "bwd ms");
    for (int s = 0; s < p->n_stages; s++) {
        const loom_autodist_stage *st = &p->stages[s];
        const loom_autodist_memory *m = &p->memory[st->pipe_rank];
        char layers[32], mesh[32];
        snprintf(layers, sizeof layers, "%s%d-%d%s", st->embeddings ? "E+" : "", st->first_layer,
                 st->first_layer + st->n_layers - 1, st->head ? "+H" : "");
        snprintf(mesh, sizeof mesh, "%dx%d", p->tp, p->dp);
        int first_chunk = st->chunk == 0;  // a rank's memory is shown on its first stage
        if (first_chunk)
            fprintf(f, "  %-5d %-5d %-13s %-10s %8.2fG %8.2fG %8.2fG %8.2fG %8.2fG %8.2fG", s,
                    st->pipe_rank, layers, mesh, gb(m->bytes.parameters), gb(m->bytes.gradients),
                    gb(m->bytes.optimizer), gb(m->bytes.activations),
                    gb(m->bytes.inputs + m->bytes.buffers), gb(m->peak));
        else
            fprintf(f, "  %-5d %-5d %-13s %-10s %9s %9s %9s %9s %9s %9s", s, st->pipe_rank, layers,
                    mesh, "", "", "", "", "", "");
        fprintf(f, " %8.2f %8.2f", 1e3 * st->forward_s, 1e3 * st->backward_s);
        if (st->recompute_layers) fprintf(f, "  (%d recomputed)", st->recompute_layers);
        fputc('\n', f);
    }
}

void loom_autodist_print(loom_autodist_t a, FILE *f, int explain) {
    const loom_autodist_config *c = loom_autodist_get_config(a);
    const loom_model_config *m = loom_autodist_model(a);
    const loom_autodist_plan *p = loom_autodist_best(a);
    char line[1024];
    fprintf(f, "model: %s, %d layers, hidden %d, %.3g B parameters; %d x %s, %.2f GB each; "
            "batch %d x %d tokens, %s\n", m->model_type, m->n_layer, m->n_embd,
            (double)a->ctx.n_params / 1e9, c->devices, loom__autodist_spec(a)->name,
            c->mem_constraint / 1e9, c->global_batch, c->seq, loom_precision_name(p->precision));
    plan_line(p, line, sizeof line);
    fprintf(f, "plan%s: %s\n", p->fits ? "" : " (does NOT fit)", line);
    print_stages(p, f);
    print_strategies(p, f);
    fprintf(f, "step %.4g s: compute %.4g s (tensor-parallel comm %.3g s), bubble %.3g s, "
            "pipeline sends %.3g s, data-parallel comm %.3g s, optimizer %.3g s\n",
            p->step_time_s, p->compute_s, p->tp_comm_s, p->bubble_s, p->pp_comm_s, p->dp_comm_s,
            p->optimizer_s);
    fprintf(f, "%.4g tokens/s, MFU %.1f%%, peak memory %.2f GB per device\n", p->tokens_per_s,
            100 * p->mfu, gb(p->peak_memory_bytes));
    if (loom_autodist_plans_evaluated(a) == 0)  // loom_autodist_load
        fprintf(f, "loaded the plan and estimated it in %.3f s\n", loom_autodist_search_seconds(a));
    else
        fprintf(f, "searched %lld plans in %.3f s\n", (long long)loom_autodist_plans_evaluated(a),
                loom_autodist_search_seconds(a));
    if (!explain) return;
    fprintf(f, "alternatives (fastest first):\n");
    for (int i = 0; i < loom_autodist_n_alternatives(a); i++) {
        const loom_autodist_plan *q = loom_autodist_alternative(a, i);
        plan_line(q, line, sizeof line);
        fprintf(f, "  %2d. %s: step %.4g s, %.2f GB: %s\n", i + 1, line, q->step_time_s,
                gb(q->peak_memory_bytes), q->rejected);
    }
}

static json_t *plan_json(const loom_autodist_plan *p) {
    json_t *stages = json_array(), *mem = json_array();
    for (int s = 0; s < p->n_stages; s++) {
        const loom_autodist_stage *st = &p->stages[s];
        json_array_append_new(stages, json_pack(
            "{s:i, s:i, s:i, s:i, s:b, s:b, s:i, s:f, s:f}", "pipe_rank", st->pipe_rank,
            "chunk", st->chunk, "first_layer", st->first_layer, "n_layers", st->n_layers,
            "embeddings", st->embeddings, "head", st->head, "recompute_layers",
            st->recompute_layers, "forward_s", st->forward_s, "backward_s", st->backward_s));
    }
    for (int r = 0; r < p->pp; r++) {
        const loom_autodist_memory *m = &p->memory[r];
        json_array_append_new(mem, json_pack(
            "{s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:i}", "peak_memory_bytes", (json_int_t)m->peak,
            "parameters", (json_int_t)m->bytes.parameters, "gradients",
            (json_int_t)m->bytes.gradients, "optimizer", (json_int_t)m->bytes.optimizer,
            "activations", (json_int_t)m->bytes.activations, "inputs",
            (json_int_t)m->bytes.inputs, "buffers", (json_int_t)m->bytes.buffers, "in_flight",
            m->in_flight));
    }
    json_t *o = json_pack(
        "{s:i, s:i, s:i, s:i, s:i, s:s, s:s, s:b, s:s, s:f, s:f, s:f, s:f, s:f, s:f, s:f, s:f, "
        "s:f, s:f, s:I, s:b}",
        "tp", p->tp, "pp", p->pp, "dp", p->dp, "micro_batch_size", p->micro_batch,
        "num_micro_batches", p->num_micro_batches, "schedule", loom_schedule_name(p->schedule),
        "recompute", loom_recompute_mode_name(p->recompute), "zero", p->zero, "precision",
        loom_precision_name(p->precision), "step_time_s", p->step_time_s, "tokens_per_s",
        p->tokens_per_s, "mfu", p->mfu, "compute_s", p->compute_s, "bubble_s", p->bubble_s,
        "tp_comm_s", p->tp_comm_s, "pp_comm_s", p->pp_comm_s, "dp_comm_s", p->dp_comm_s,
        "optimizer_s", p->optimizer_s, "model_flops", p->model_flops, "max_peak_memory_bytes",
        (json_int_t)p->peak_memory_bytes, "fits", p->fits);
    json_object_set_new(o, "chunks", json_integer(p->chunks));
    json_object_set_new(o, "pipeline_layers", json_string(p->pipeline_layers));
    json_object_set_new(o, "recompute_modules", json_string(p->recompute_spec));
    json_object_set_new(o, "layout", json_string(p->layout ? p->layout : ""));
    json_object_set_new(o, "stages", stages);
    json_object_set_new(o, "peak_memory_bytes", mem);
    if (p->rejected && p->rejected[0]) json_object_set_new(o, "rejected", json_string(p->rejected));
    return o;
}

loom_status loom_autodist_write_json(loom_autodist_t a, FILE *f) {
    const loom_autodist_config *c = loom_autodist_get_config(a);
    json_t *alts = json_array();
    for (int i = 0; i < loom_autodist_n_alternatives(a); i++)
        json_array_append_new(alts, plan_json(loom_autodist_alternative(a, i)));
    json_t *root = plan_json(loom_autodist_best(a));
    json_object_set_new(root, "devices", json_integer(c->devices));
    json_object_set_new(root, "device_spec", json_string(loom__autodist_spec(a)->name));
    json_object_set_new(root, "mem_constraint_bytes", json_real(c->mem_constraint));
    json_object_set_new(root, "global_batch", json_integer(c->global_batch));
    json_object_set_new(root, "seq", json_integer(c->seq));
    json_object_set_new(root, "n_params", json_integer(a->ctx.n_params));
    json_object_set_new(root, "search_time_s", json_real(loom_autodist_search_seconds(a)));
    json_object_set_new(root, "plans_evaluated",
                        json_integer(loom_autodist_plans_evaluated(a)));
    json_object_set_new(root, "min_memory_bytes",
                        json_integer((json_int_t)loom_autodist_min_memory(a)));
    json_object_set_new(root, "alternatives", alts);
    int rc = json_dumpf(root, f, JSON_INDENT(2));
    fputc('\n', f);
    json_decref(root);
    return rc == 0 ? LOOM_OK : loom__error(LOOM_ERR_IO, "writing the plan as JSON failed");
}

void loom_autodist_print_megatron(loom_autodist_t a, FILE *f) {
    const loom_autodist_config *c = loom_autodist_get_config(a);
    const loom_autodist_plan *p = loom_autodist_best(a);
    fprintf(f, "--tensor-model-parallel-size %d --pipeline-model-parallel-size %d "
            "--micro-batch-size %d --global-batch-size %d --seq-length %d", p->tp, p->pp,
            p->micro_batch, c->global_batch, c->seq);
    // Megatron splits the layers evenly, except that the first and last stages may hold other
    // counts (the rest evenly over the middle ones); interleaving needs equal virtual stages.
    const char *uneven = NULL;
    int k0 = p->stages[0].n_layers, kl = p->stages[p->n_stages - 1].n_layers, even = 1, mid = 1;
    for (int s = 1; s < p->n_stages; s++) even &= p->stages[s].n_layers == k0;
    for (int s = 2; s < p->n_stages - 1; s++) mid &= p->stages[s].n_layers == p->stages[1].n_layers;
    if (p->chunks > 1) {
        fprintf(f, " --num-layers-per-virtual-pipeline-stage %d", k0);
        if (!even) uneven = "interleaving needs equal virtual stages";
    } else if (!even && mid) {
        fprintf(f, " --decoder-first-pipeline-num-layers %d --decoder-last-pipeline-num-layers %d",
                k0, kl);
    } else if (!even) {
        uneven = "only the first and last stages may differ";
    }
    if (p->recompute == LOOM_RECOMPUTE_SELECTIVE) fprintf(f, " --recompute-activations");
    if (p->recompute == LOOM_RECOMPUTE_FULL) {
        int most = 0;
        for (int s = 0; s < p->n_stages; s++)
            if (p->stages[s].recompute_layers > most) most = p->stages[s].recompute_layers;
        fprintf(f, " --recompute-granularity full --recompute-method block "
                "--recompute-num-layers %d", most);
    }
    if (p->zero) fprintf(f, " --use-distributed-optimizer");
    if (p->precision == LOOM_PRECISION_MIXED) fprintf(f, " --bf16");
    // What Megatron cannot say goes in a shell comment: the line still runs.
    if (uneven)
        fprintf(f, "  # loom's stages hold %s layers; Megatron cannot split them so (%s)",
                p->pipeline_layers, uneven);
    if (p->layout && p->layout[0])
        fprintf(f, "  # Megatron has no flag for loom's per-op strategies (%s): its tensor "
                "parallelism splits them as the family's table does", p->layout);
    fputc('\n', f);
}
