// Model files and generation: Hugging Face save/load round trips (single file, sharded, GPT-2
// keys with and without "transformer."), clear errors for damaged model directories, and
// key/value-cache decoding agreeing with the full forward pass.

#include "loom/exec.h"
#include "loom/safetensors.h"
#include "loom/train.h"
#include "testutil.h"

#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static char tmp_root[256];

static void make_dir(char *out, size_t cap, const char *name) {
    snprintf(out, cap, "%s/%s", tmp_root, name);
    mkdir(out, 0777);
}

static void copy_file(const char *from, const char *to) {
    FILE *a = fopen(from, "rb"), *b = fopen(to, "wb");
    char buf[65536];
    size_t n;
    while (a && b && (n = fread(buf, 1, sizeof buf, a)) > 0) fwrite(buf, 1, n, b);
    if (a) fclose(a);
    if (b) fclose(b);
}

static void write_text(const char *path, const char *text) {
    FILE *f = fopen(path, "w");
    fputs(text, f);
    fclose(f);
}

// Bitwise equality of every parameter of two models with the same architecture.
static int same_params(loom_model_t a, loom_model_t b) {
    if (loom_model_n_tensors(a) != loom_model_n_tensors(b)) return 0;
    for (int i = 0; i < loom_model_n_tensors(a); i++) {
        const char *name = loom_model_tensor_name(a, i, NULL, NULL);
        float *x, *y;
        int64_t n, m;
        if (loom_model_tensor(a, name, &x, &n) < 0 || loom_model_tensor(b, name, &y, &m) < 0 ||
            n != m || memcmp(x, y, (size_t)n * sizeof(float)) != 0) {
            fprintf(stderr, "parameter %s differs\n", name);
            return 0;
        }
    }
    return 1;
}

// Write every parameter of `m` into `path` under names produced by `rename_fn` (NULL: as is),
// leaving out `skip` (NULL: nothing).
static void write_tensors(loom_model_t m, const char *path, const char *prefix, const char *skip,
                          size_t shard_bytes) {
    int n = loom_model_n_tensors(m), k = 0;
    loom_named_tensor *t = calloc((size_t)n, sizeof *t);
    char (*names)[256] = calloc((size_t)n, sizeof *names);
    for (int i = 0; i < n; i++) {
        int ndim;
        int64_t shape[LOOM_MAX_DIMS];
        const char *name = loom_model_tensor_name(m, i, &ndim, shape);
        if (skip && !strcmp(name, skip)) continue;
        snprintf(names[k], sizeof names[k], "%s%s", prefix, name);
        float *data;
        loom_model_tensor(m, name, &data, NULL);
        t[k] = (loom_named_tensor){.name = names[k], .dtype = LOOM_DTYPE_F32, .ndim = ndim,
                                   .data = data};
        memcpy(t[k].shape, shape, sizeof shape);
        k++;
    }
    if (shard_bytes) CHECK_OK(loom_safetensors_write_sharded(path, k, t, shard_bytes));
    else CHECK_OK(loom_safetensors_write(path, k, t, 0, NULL));
    free(t);
    free(names);
}

static void test_round_trips(void) {
    char src[512], dir[512], path[600];
    snprintf(src, sizeof src, "%s/oracle/gpt2", LOOM_TEST_DATA);
    loom_model_t ref;
    CHECK_OK(loom_model_load(src, &ref));

    // save -> load
    make_dir(dir, sizeof dir, "saved");
    CHECK_OK(loom_model_save(ref, dir));
    loom_model_t m;
    CHECK_OK(loom_model_load(dir, &m));
    CHECK(same_params(ref, m));
    const loom_model_config *a = loom_model_get_config(ref), *b = loom_model_get_config(m);
    CHECK(a->n_layer == b->n_layer && a->n_embd == b->n_embd && a->vocab_size == b->vocab_size &&
          a->max_seq == b->max_seq && a->norm_eps == b->norm_eps);
    loom_model_free(m);

    // GPT-2 keys without the "transformer." prefix (as the original gpt2 checkpoint has them)
    make_dir(dir, sizeof dir, "noprefix");
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    write_tensors(ref, path, "", NULL, 0);
    snprintf(path, sizeof path, "%s/config.json", dir);
    char cfg_src[600];
    snprintf(cfg_src, sizeof cfg_src, "%s/config.json", src);
    copy_file(cfg_src, path);
    CHECK_OK(loom_model_load(dir, &m));
    CHECK(same_params(ref, m));
    loom_model_free(m);

    // sharded with model.safetensors.index.json
    make_dir(dir, sizeof dir, "sharded");
    write_tensors(ref, dir, "transformer.", NULL, 20000);
    snprintf(path, sizeof path, "%s/model.safetensors.index.json", dir);
    CHECK_MSG(access(path, F_OK) == 0, "sharded write made no index");
    snprintf(path, sizeof path, "%s/config.json", dir);
    copy_file(cfg_src, path);
    CHECK_OK(loom_model_load(dir, &m));
    CHECK(same_params(ref, m));
    loom_model_free(m);

    // a missing tensor: not found, naming the tensor
    make_dir(dir, sizeof dir, "missing");
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    write_tensors(ref, path, "transformer.", "h.1.mlp.c_fc.bias", 0);
    snprintf(path, sizeof path, "%s/config.json", dir);
    copy_file(cfg_src, path);
    m = NULL;
    CHECK(loom_model_load(dir, &m) == LOOM_ERR_NOT_FOUND && m == NULL);
    CHECK_MSG(strstr(loom_last_error(), "h.1.mlp.c_fc.bias") != NULL, "%s", loom_last_error());
    loom_model_free(ref);
}

static void test_bad_configs(void) {
    struct {
        const char *json;
        loom_status want;
        const char *needle;
    } cases[] = {
        {"{\"model_type\": \"gpt2\", \"n_embd\": 32", LOOM_ERR_FORMAT, "line"},
        {"[1, 2]", LOOM_ERR_FORMAT, "object"},
        {"{\"n_embd\": 32}", LOOM_ERR_FORMAT, "model_type"},
        {"{\"model_type\": \"bert\"}", LOOM_ERR_UNSUPPORTED, "bert"},
        {"{\"model_type\": \"gpt2\", \"n_embd\": 32, \"n_layer\": 2, \"n_head\": 4}",
         LOOM_ERR_FORMAT, "vocab_size"},
        {"{\"model_type\": \"gpt2\", \"vocab_size\": 10, \"n_embd\": \"wide\", \"n_layer\": 2, "
         "\"n_head\": 4}", LOOM_ERR_FORMAT, "n_embd"},
        {"{\"model_type\": \"gpt2\", \"vocab_size\": 10, \"n_embd\": 30, \"n_layer\": 2, "
         "\"n_head\": 4}", LOOM_ERR_INVALID, "n_head"},
        {"{\"model_type\": \"llama\", \"vocab_size\": 10, \"hidden_size\": 32, "
         "\"intermediate_size\": 64, \"num_hidden_layers\": 1, \"num_attention_heads\": 4, "
         "\"num_key_value_heads\": 3}", LOOM_ERR_INVALID, "num_key_value_heads"},
        {"{\"model_type\": \"llama\", \"vocab_size\": 10, \"hidden_size\": 32, "
         "\"intermediate_size\": 64, \"num_hidden_layers\": 1, \"num_attention_heads\": 4, "
         "\"rope_scaling\": {\"type\": \"linear\", \"factor\": 2.0}}", LOOM_ERR_UNSUPPORTED,
         "rope_scaling"},
    };
    char dir[512], path[600];
    make_dir(dir, sizeof dir, "badcfg");
    snprintf(path, sizeof path, "%s/config.json", dir);
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        write_text(path, cases[i].json);
        loom_model_config cfg;
        loom_status st = loom_model_config_load(path, &cfg);
        CHECK_MSG(st == cases[i].want, "case %zu: status %d, want %d (%s)", i, st, cases[i].want,
                  loom_last_error());
        CHECK_MSG(strstr(loom_last_error(), cases[i].needle) != NULL &&
                      strstr(loom_last_error(), "config.json") != NULL,
                  "case %zu: message '%s' lacks '%s' or the file", i, loom_last_error(),
                  cases[i].needle);
    }
}

// Mistral and Qwen2 configs map onto the LLaMA family; a sequence longer than Mistral's
// sliding window is refused (sliding-window attention is not implemented).
static void test_family_configs(void) {
    char dir[512], path[600];
    make_dir(dir, sizeof dir, "mistral");
    snprintf(path, sizeof path, "%s/config.json", dir);
    write_text(path, "{\"model_type\": \"mistral\", \"vocab_size\": 64, \"hidden_size\": 32, "
                     "\"intermediate_size\": 64, \"num_hidden_layers\": 1, "
                     "\"num_attention_heads\": 4, \"num_key_value_heads\": 2, "
                     "\"max_position_embeddings\": 256, \"sliding_window\": 16, "
                     "\"rope_theta\": 1000000.0, \"tie_word_embeddings\": false}");
    loom_model_config cfg;
    CHECK_OK(loom_model_config_load(path, &cfg));
    CHECK(cfg.family == LOOM_FAMILY_LLAMA && !strcmp(cfg.model_type, "mistral"));
    CHECK(cfg.n_kv_head == 2 && cfg.head_dim == 8 && cfg.sliding_window == 16 &&
          cfg.rope_theta == 1000000.0f && !cfg.attention_bias && !cfg.tie_word_embeddings);
    loom_model_t m;
    CHECK_OK(loom_model_create(&cfg, 7, &m));
    loom_graph_t g = NULL;
    CHECK_OK(loom_model_build_graph(m, LOOM_GRAPH_TRAIN, 1, 16, 0, &g));
    loom_graph_destroy(g);
    g = NULL;
    CHECK(loom_model_build_graph(m, LOOM_GRAPH_TRAIN, 1, 17, 0, &g) == LOOM_ERR_UNSUPPORTED);
    CHECK_MSG(strstr(loom_last_error(), "sliding_window") != NULL, "%s", loom_last_error());
    loom_model_free(m);

    char src[512];
    snprintf(src, sizeof src, "%s/oracle/qwen2/config.json", LOOM_TEST_DATA);
    CHECK_OK(loom_model_config_load(src, &cfg));
    CHECK(cfg.attention_bias && !cfg.o_bias && cfg.tie_word_embeddings && cfg.n_kv_head == 1 &&
          cfg.sliding_window == 0);
}

static int argmax(const float *x, int n) {
    int best = 0;
    for (int i = 1; i < n; i++)
        if (x[i] > x[best]) best = i;
    return best;
}

// Greedy decoding with the key/value cache must pick, at every step, the argmax of the full
// (cache-free) forward pass over the same prefix.
static void test_generate_matches_forward(const char *name) {
    char dir[512];
    snprintf(dir, sizeof dir, "%s/oracle/%s", LOOM_TEST_DATA, name);
    loom_model_t m;
    CHECK_OK(loom_model_load(dir, &m));
    const loom_model_config *cfg = loom_model_get_config(m);
    enum { P = 5, N = 10 };
    int32_t seq[P + N] = {3, 17, 42, 8, 61};
    int n_out = 0;
    loom_sample_config sc = loom_sample_config_default();
    sc.temperature = 0;
    CHECK_OK(loom_generate(m, seq, P, N, &sc, NULL, NULL, seq + P, &n_out));
    CHECK(n_out == N);
    loom_graph_t g;
    CHECK_OK(loom_model_build_graph(m, LOOM_GRAPH_FORWARD, 1, P + N, 0, &g));
    loom_exec_t ex;
    CHECK_OK(loom_exec_create(g, &ex));
    void *buf;
    for (int i = 0; i < loom_model_n_tensors(m); i++) {
        int64_t n;
        float *data;
        const char *pname = loom_model_tensor_name(m, i, NULL, NULL);
        loom_model_tensor(m, pname, &data, &n);
        CHECK_OK(loom_exec_buffer(ex, loom_graph_find(g, pname), &buf));
        memcpy(buf, data, (size_t)n * sizeof(float));
    }
    CHECK_OK(loom_exec_buffer(ex, loom_graph_find(g, "tokens"), &buf));
    memcpy(buf, seq, sizeof seq);
    CHECK_OK(loom_exec_buffer(ex, loom_graph_find(g, "positions"), &buf));
    for (int t = 0; t < P + N; t++) ((int32_t *)buf)[t] = t;
    CHECK_OK(loom_exec_run(ex));
    loom_value logits = LOOM_NONE;
    for (int v = 0; v < loom_graph_n_values(g); v++)
        if (loom_exec_buffer(ex, v, &buf) == 0 && loom_value_role(g, v) == LOOM_ROLE_ACTIVATION)
            logits = v;
    CHECK_OK(loom_exec_buffer(ex, logits, &buf));
    const float *lg = buf;
    int agree = 0;
    for (int t = P - 1; t < P + N - 1; t++)
        agree += argmax(lg + (size_t)t * cfg->vocab_size, cfg->vocab_size) == seq[t + 1];
    CHECK_MSG(agree == N, "%s: cached decoding agreed with the full forward on %d of %d tokens",
              name, agree, N);
    loom_exec_free(ex);
    loom_graph_destroy(g);
    // The context caps generation instead of overflowing the cache.
    int32_t *long_out = malloc(100 * sizeof(int32_t));
    CHECK_OK(loom_generate(m, seq, P, 100, &sc, NULL, NULL, long_out, &n_out));
    CHECK_MSG(n_out == cfg->max_seq - P || cfg->max_seq - P > 100, "%s: %d tokens generated",
              name, n_out);
    free(long_out);
    loom_model_free(m);
}

int main(void) {
    snprintf(tmp_root, sizeof tmp_root, "/tmp/loom-test-models-XXXXXX");
    if (!mkdtemp(tmp_root)) return 1;
    test_round_trips();
    test_bad_configs();
    test_family_configs();
    test_generate_matches_forward("gpt2");
    test_generate_matches_forward("llama");
    test_generate_matches_forward("qwen2");
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmp_root);
    if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", tmp_root);
    return tu_finish();
}
