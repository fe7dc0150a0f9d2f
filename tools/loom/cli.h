// loom command-line tool: shared helpers for the subcommands (strict option parsing, usage
// errors, progress display). The CLI is the only code with main() and exit().

#ifndef LOOM_CLI_H
#define LOOM_CLI_H

#include "loom/loom.h"

#include <getopt.h>
#include <stdint.h>

#define CLI_EXIT_USAGE 2

// Parse helpers: on bad input they print "loom CMD: --flag: reason" plus the usage line and
// exit with status 2.
typedef struct cli_ctx {
    const char *cmd;      // "train"
    const char *usage;    // one-line usage
} cli_ctx;

// The next long option of argv: returns its name and sets *arg (NULL without one); "help" for
// -h / --help; NULL at the end. Unknown options and stray arguments exit 2 with the usage line.
const char *cli_next_option(const cli_ctx *c, int argc, char **argv, const struct option *opts,
                            const char **arg);
// The same, leaving positional arguments at argv[optind..argc) for the caller.
const char *cli_next_option_positional(const cli_ctx *c, int argc, char **argv,
                                       const struct option *opts, const char **arg);

int cli_int(const cli_ctx *c, const char *flag, const char *text, long min, long max);
float cli_float(const cli_ctx *c, const char *flag, const char *text, double min, double max);
uint64_t cli_u64(const cli_ctx *c, const char *flag, const char *text);
void cli_usage_error(const cli_ctx *c, const char *fmt, ...) __attribute__((noreturn, format(printf, 2, 3)));
// Print loom_last_error() after a failed call and return exit status 1.
int cli_fail(const char *cmd, const char *what);

// Print one generated token to stdout (byte tokens as bytes, others as <|id|>).
int cli_print_token(int32_t token, void *user);

int cmd_train(int argc, char **argv);
int cmd_generate(int argc, char **argv);
int cmd_graph(int argc, char **argv);
int cmd_merge(int argc, char **argv);
int cmd_bench(int argc, char **argv);
int cmd_plan(int argc, char **argv);

// Progress line on stderr: a bar on a terminal, a plain line every `every` steps otherwise.
typedef struct cli_progress {
    int total;
    int is_tty;
    double started;
} cli_progress;
void cli_progress_init(cli_progress *p, int total);
void cli_progress_step(cli_progress *p, int step, float loss, double tokens_per_s);
void cli_progress_done(cli_progress *p);
double cli_now(void);

// Model selection shared by train/generate/graph: --model-dir DIR or --model FAMILY + sizes.
typedef struct cli_model_opts {
    const char *dir;
    const char *family;
    int layers, embd, heads, kv_heads, vocab, ctx, inner;
    uint64_t seed;
} cli_model_opts;
// Returns 1 if `opt` (a getopt_long index into cli_model_options) was consumed.
int cli_model_option(const cli_ctx *c, cli_model_opts *m, const char *name, const char *arg);
// Usage checks of the model flags (exits 2 on misuse); cli_model_load runs them too.
void cli_model_check(const cli_ctx *c, const cli_model_opts *m);
int cli_model_load(const cli_ctx *c, const cli_model_opts *m, loom_model_t *out);
// A model with the config of a sharded or merged checkpoint (weights not loaded).
int cli_model_from_checkpoint(const char *dir, loom_model_t *out);
#define CLI_MODEL_OPTIONS                                                                  \
    {"model-dir", required_argument, 0, 0}, {"model", required_argument, 0, 0},            \
    {"layers", required_argument, 0, 0}, {"embd", required_argument, 0, 0},               \
    {"heads", required_argument, 0, 0}, {"kv-heads", required_argument, 0, 0},             \
    {"vocab", required_argument, 0, 0}, {"ctx", required_argument, 0, 0},                  \
    {"inner", required_argument, 0, 0}, {"seed", required_argument, 0, 0}
#define CLI_MODEL_HELP                                                                     \
    "model (one of):\n"                                                                    \
    "  --model-dir DIR        Hugging Face directory: config.json + model.safetensors\n"   \
    "                         (or model.safetensors.index.json and its shards)\n"          \
    "  --model gpt2|llama     random init with the sizes below (defaults: 6 layers,\n"     \
    "                         384 wide, 6 heads, byte vocabulary of 256)\n"                \
    "  --layers N --embd N --heads N --kv-heads N --vocab N --ctx N --inner N\n"          \
    "  --seed N               random init seed (default 1337)\n"

#endif // LOOM_CLI_H
