// CLI helpers: strict number parsing, usage errors, model selection, progress display.

#include "cli.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

void cli_usage_error(const cli_ctx *c, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "loom %s: ", c->cmd);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fprintf(stderr, "\nusage: %s\nRun 'loom %s --help' for details.\n", c->usage, c->cmd);
    exit(CLI_EXIT_USAGE);
}

static const char *next_option(const cli_ctx *c, int argc, char **argv,
                               const struct option *opts, const char **arg, int positional) {
    static char **started;  // argv being parsed: getopt's state restarts for a new one
    if (started != argv) {
        started = argv;
        opterr = 0;
        optind = 1;
    }
    int idx = -1;
    int ch = getopt_long(argc, argv, "h", opts, &idx);
    *arg = optarg;
    if (ch == 'h') return "help";
    if (ch == '?') cli_usage_error(c, "unknown or incomplete option '%s'", argv[optind - 1]);
    if (ch == -1) {
        if (!positional && optind < argc) cli_usage_error(c, "unexpected argument '%s'", argv[optind]);
        return NULL;
    }
    return opts[idx].name;
}

const char *cli_next_option(const cli_ctx *c, int argc, char **argv, const struct option *opts,
                            const char **arg) {
    return next_option(c, argc, argv, opts, arg, 0);
}

const char *cli_next_option_positional(const cli_ctx *c, int argc, char **argv,
                                       const struct option *opts, const char **arg) {
    return next_option(c, argc, argv, opts, arg, 1);
}

int cli_int(const cli_ctx *c, const char *flag, const char *text, long min, long max) {
    char *end;
    errno = 0;
    long v = strtol(text, &end, 10);
    if (errno || end == text || *end)
        cli_usage_error(c, "--%s: '%s' is not an integer", flag, text);
    if (v < min || v > max) cli_usage_error(c, "--%s: %ld is outside [%ld, %ld]", flag, v, min, max);
    return (int)v;
}

float cli_float(const cli_ctx *c, const char *flag, const char *text, double min, double max) {
    char *end;
    errno = 0;
    double v = strtod(text, &end);
    if (errno || end == text || *end || !isfinite(v))
        cli_usage_error(c, "--%s: '%s' is not a number", flag, text);
    if (v < min || v > max) cli_usage_error(c, "--%s: %g is outside [%g, %g]", flag, v, min, max);
    return (float)v;
}

uint64_t cli_u64(const cli_ctx *c, const char *flag, const char *text) {
    char *end;
    errno = 0;
    unsigned long long v = strtoull(text, &end, 10);
    if (errno || end == text || *end || text[0] == '-')
        cli_usage_error(c, "--%s: '%s' is not a non-negative integer", flag, text);
    return v;
}

int cli_fail(const char *cmd, const char *what) {
    fprintf(stderr, "loom %s: %s: %s\n", cmd, what, loom_last_error());
    return 1;
}

int cli_model_option(const cli_ctx *c, cli_model_opts *m, const char *name, const char *arg) {
    if (!strcmp(name, "model-dir")) m->dir = arg;
    else if (!strcmp(name, "model")) m->family = arg;
    else if (!strcmp(name, "layers")) m->layers = cli_int(c, name, arg, 1, 1000);
    else if (!strcmp(name, "embd")) m->embd = cli_int(c, name, arg, 1, 1 << 20);
    else if (!strcmp(name, "heads")) m->heads = cli_int(c, name, arg, 1, 4096);
    else if (!strcmp(name, "kv-heads")) m->kv_heads = cli_int(c, name, arg, 1, 4096);
    else if (!strcmp(name, "vocab")) m->vocab = cli_int(c, name, arg, 2, 1 << 24);
    else if (!strcmp(name, "ctx")) m->ctx = cli_int(c, name, arg, 1, 1 << 20);
    else if (!strcmp(name, "inner")) m->inner = cli_int(c, name, arg, 1, 1 << 24);
    else if (!strcmp(name, "seed")) m->seed = cli_u64(c, name, arg);
    else return 0;
    return 1;
}

void cli_model_check(const cli_ctx *c, const cli_model_opts *m) {
    if (m->dir && m->family) cli_usage_error(c, "give --model-dir or --model, not both");
    if (!m->dir && !m->family)
        cli_usage_error(c, "a model is required: --model-dir DIR or --model gpt2|llama");
    if (m->dir && (m->layers || m->embd || m->heads || m->kv_heads || m->vocab || m->ctx ||
                   m->inner))
        cli_usage_error(c, "size flags apply to --model only; --model-dir reads config.json");
    if (m->family && strcmp(m->family, "gpt2") && strcmp(m->family, "llama"))
        cli_usage_error(c, "--model: '%s' is not gpt2 or llama", m->family);
}

int cli_model_load(const cli_ctx *c, const cli_model_opts *m, loom_model_t *out) {
    cli_model_check(c, m);
    if (m->dir) {
        if (loom_model_load(m->dir, out) < 0) return cli_fail(c->cmd, "loading the model");
        return 0;
    }
    int family = !strcmp(m->family, "gpt2") ? LOOM_FAMILY_GPT2 : LOOM_FAMILY_LLAMA;
    loom_model_config cfg = loom_model_config_default((loom_family)family);
    if (m->layers) cfg.n_layer = m->layers;
    if (m->embd) {
        cfg.n_embd = m->embd;
        cfg.n_inner = family == LOOM_FAMILY_GPT2 ? 4 * m->embd : (8 * m->embd / 3 + 63) / 64 * 64;
    }
    if (m->heads) cfg.n_head = m->heads;
    cfg.n_kv_head = m->kv_heads ? m->kv_heads : family == LOOM_FAMILY_GPT2 ? cfg.n_head
                                                  : (m->heads ? m->heads : cfg.n_kv_head);
    if (cfg.n_head > 0) cfg.head_dim = cfg.n_embd / cfg.n_head;
    if (m->vocab) cfg.vocab_size = m->vocab;
    if (m->ctx) cfg.max_seq = m->ctx;
    if (m->inner) cfg.n_inner = m->inner;
    if (family == LOOM_FAMILY_GPT2 && cfg.n_kv_head != cfg.n_head)
        cli_usage_error(c, "--kv-heads: GPT-2 has no grouped-query attention");
    if (cfg.n_head > 0 && cfg.n_embd % cfg.n_head)
        cli_usage_error(c, "--embd %d is not a multiple of --heads %d", cfg.n_embd, cfg.n_head);
    if (loom_model_create(&cfg, m->seed ? m->seed : 1337, out) < 0)
        return cli_fail(c->cmd, "creating the model");
    return 0;
}

int cli_model_from_checkpoint(const char *dir, loom_model_t *out) {
    loom_checkpoint_t ck;
    if (loom_checkpoint_open(dir, &ck) < 0) return cli_fail("train", "opening the checkpoint");
    const char *json = loom_checkpoint_config_json(ck);
    loom_model_config cfg;
    int rc = 0;
    if (!json) {
        fprintf(stderr, "loom train: %s holds no model config; give --model-dir too\n", dir);
        rc = 1;
    } else if (loom_model_config_parse(json, dir, &cfg) < 0 || loom_model_create(&cfg, 1, out) < 0) {
        rc = cli_fail("train", "reading the checkpoint's model config");
    }
    loom_checkpoint_close(ck);
    return rc;
}

// ---- progress -------------------------------------------------------------------------------------

double cli_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

void cli_progress_init(cli_progress *p, int total) {
    p->total = total;
    p->is_tty = isatty(2);
    p->started = cli_now();
}

static void format_duration(char *buf, size_t cap, double s) {
    int t = (int)(s + 0.5);
    if (t >= 3600) snprintf(buf, cap, "%d:%02d:%02d", t / 3600, t / 60 % 60, t % 60);
    else snprintf(buf, cap, "%d:%02d", t / 60, t % 60);
}

void cli_progress_step(cli_progress *p, int step, float loss, double tokens_per_s) {
    double elapsed = cli_now() - p->started;
    double eta = step > 0 ? elapsed / step * (p->total - step) : 0;
    char e1[16], e2[16];
    format_duration(e1, sizeof e1, elapsed);
    format_duration(e2, sizeof e2, eta);
    if (p->is_tty) {
        int width = 24, filled = p->total ? width * step / p->total : width;
        char bar[32];
        for (int i = 0; i < width; i++) bar[i] = i < filled ? '#' : '.';
        bar[width] = '\0';
        fprintf(stderr, "\rstep %*d/%d [%s] loss %.4f | %.0f tok/s | %s elapsed, eta %s ",
                (int)snprintf(NULL, 0, "%d", p->total), step, p->total, bar, (double)loss,
                tokens_per_s, e1, e2);
    } else {
        int every = p->total >= 50 ? p->total / 10 : 1;
        if (step % every && step != p->total) return;
        fprintf(stderr, "step %d/%d loss %.4f | %.0f tok/s | %s elapsed, eta %s\n", step,
                p->total, (double)loss, tokens_per_s, e1, e2);
    }
    fflush(stderr);
}

void cli_progress_done(cli_progress *p) {
    if (p->is_tty) fputc('\n', stderr);
}
