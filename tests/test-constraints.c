// Tests of the partition-constraint reader: the nnScaler example and both dim forms parse into
// the right fields; module matching and lookup; every error names the file, line and column.

#include "io-testutil.h"

#include "loom/constraints.h"
#include "loom/status.h"

#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

// The example of the nnScaler documentation, byte for byte.
static const char SEED[] =
    "- allowed_partition_dims:\n"
    "  - 0,0\n"
    "  name: torchscale.component.xmoe.routing.top2gating\n"
    "  parent_module: Top2Gate\n"
    "  replica_allowed: false\n"
    "- allowed_partition_dims:\n"
    "  - 0,0\n"
    "  name: torchscale.component.xmoe.moe_layer.dispatch_expert_inputs\n"
    "  parent_module: MOELayer\n"
    "  replica_allowed: false\n"
    "- allowed_partition_dims:\n"
    "  - 0,0\n"
    "  name: torchscale.component.xmoe.moe_layer.merge_expert_outputs\n"
    "  parent_module: MOELayer\n"
    "  replica_allowed: false\n"
    "- allowed_partition_dims:\n"
    "  - 0,0\n"
    "  name: torchscale.component.xmoe.routing.compute_logits\n"
    "  parent_module: Top2Gate\n"
    "  replica_allowed: true\n";

static loom_constraints_t parse_ok(const char *text, int src_line) {
    loom_constraints_t c = NULL;
    loom_status st = loom_constraints_parse(text, strlen(text), "t.yaml", &c);
    CHECK_MSG(st == LOOM_OK && c, "(line %d) should parse: %s", src_line, loom_last_error());
    return c;
}
#define PARSE_OK(text) parse_ok(text, __LINE__)

static int str_eq(const char *a, const char *b) {
    return (!a && !b) || (a && b && strcmp(a, b) == 0);
}

// ---- well-formed ---------------------------------------------------------------------------------

static void test_seed(void) {
    loom_constraints_t c = PARSE_OK(SEED);
    CHECK(loom_constraints_count(c) == 4);
    static const char *names[] = {
        "torchscale.component.xmoe.routing.top2gating",
        "torchscale.component.xmoe.moe_layer.dispatch_expert_inputs",
        "torchscale.component.xmoe.moe_layer.merge_expert_outputs",
        "torchscale.component.xmoe.routing.compute_logits"};
    static const char *parents[] = {"Top2Gate", "MOELayer", "MOELayer", "Top2Gate"};
    static const int replica[] = {0, 0, 0, 1};
    for (int i = 0; i < 4 && i < loom_constraints_count(c); i++) {
        const loom_partition_constraint *pc = loom_constraints_at(c, i);
        CHECK(pc != NULL);
        if (!pc) continue;
        CHECK_MSG(str_eq(pc->name, names[i]), "entry %d name '%s'", i, pc->name);
        CHECK_MSG(str_eq(pc->parent_module, parents[i]), "entry %d parent '%s'", i,
                  pc->parent_module);
        CHECK(pc->n_allowed == 1 && pc->allowed);
        if (pc->n_allowed == 1 && pc->allowed) CHECK(pc->allowed[0].input == 0 && pc->allowed[0].dim == 0);
        CHECK(pc->replica_allowed == replica[i]);
        CHECK_MSG(pc->line == 1 + 5 * i && pc->column == 3, "entry %d at %d:%d", i, pc->line,
                  pc->column);
    }
    CHECK(loom_constraints_at(c, 4) == NULL);
    CHECK(loom_constraints_at(c, -1) == NULL);
    int idx[4] = {-1, -1, -1, -1};
    CHECK(loom_constraints_find(c, "torchscale.component.xmoe.moe_layer.merge_expert_outputs",
                                "encoder.layers.3.moe_layer.MOELayer", idx, 4) == 1);
    CHECK(idx[0] == 2);
    CHECK(loom_constraints_find(c, "torchscale.component.xmoe.moe_layer.merge_expert_outputs",
                                "encoder.layers.3.Top2Gate", idx, 4) == 0);
    loom_constraints_free(c);
}

static void test_dim_forms(void) {
    loom_constraints_t c = PARSE_OK(
        "- name: loom.linear\n"
        "  allowed_partition_dims: [[0, 1], [1, 0]]\n"
        "- name: loom.matmul\n"
        "  allowed_partition_dims:\n"
        "  - [0, -1]\n"
        "  - ' 1 , 0 '\n"
        "  - \"2,+1\"\n"
        "  - - 3\n"
        "    - -8\n"
        "- {name: loom.add, allowed_partition_dims: ['0,0', [255, 7]], replica_allowed: False}\n");
    CHECK(loom_constraints_count(c) == 3);
    const loom_partition_constraint *a = loom_constraints_at(c, 0);
    const loom_partition_constraint *b = loom_constraints_at(c, 1);
    const loom_partition_constraint *f = loom_constraints_at(c, 2);
    if (a && b && f) {
        CHECK(a->n_allowed == 2);
        CHECK(a->allowed[0].input == 0 && a->allowed[0].dim == 1);
        CHECK(a->allowed[1].input == 1 && a->allowed[1].dim == 0);
        CHECK(a->replica_allowed == 1 && a->parent_module == NULL);
        CHECK(b->n_allowed == 4);
        CHECK(b->allowed[0].input == 0 && b->allowed[0].dim == -1);
        CHECK(b->allowed[1].input == 1 && b->allowed[1].dim == 0);
        CHECK(b->allowed[2].input == 2 && b->allowed[2].dim == 1);
        CHECK(b->allowed[3].input == 3 && b->allowed[3].dim == -8);
        CHECK(b->line == 3 && b->column == 3);
        CHECK(f->n_allowed == 2 && f->replica_allowed == 0);
        CHECK(f->allowed[1].input == 255 && f->allowed[1].dim == 7);
        CHECK_MSG(f->line == 10 && f->column == 3, "flow entry at %d:%d", f->line, f->column);
    }
    loom_constraints_free(c);
}

static void test_absent_empty_defaults(void) {
    loom_constraints_t c = PARSE_OK(
        "# comment first\n"
        "- name: a.absent\n"
        "- name: a.empty\n"
        "  allowed_partition_dims: []\n"
        "  replica_allowed: yes\n"
        "- name: a.nullparent\n"
        "  parent_module:\n"
        "  replica_allowed: OFF\n"
        "- name: 'a.quotedempty'\n"
        "  parent_module: ''\n"
        "  replica_allowed: True\n");
    CHECK(loom_constraints_count(c) == 4);
    const loom_partition_constraint *p0 = loom_constraints_at(c, 0), *p1 = loom_constraints_at(c, 1);
    const loom_partition_constraint *p2 = loom_constraints_at(c, 2), *p3 = loom_constraints_at(c, 3);
    if (p0 && p1 && p2 && p3) {
        CHECK(p0->n_allowed == -1 && p0->allowed == NULL);
        CHECK(p0->replica_allowed == 1 && p0->parent_module == NULL);
        CHECK(p0->line == 2 && p0->column == 3);
        CHECK(p1->n_allowed == 0 && p1->allowed == NULL && p1->replica_allowed == 1);
        CHECK(p2->parent_module == NULL && p2->replica_allowed == 0 && p2->n_allowed == -1);
        CHECK(str_eq(p3->name, "a.quotedempty") && p3->parent_module == NULL);
        CHECK(p3->replica_allowed == 1);
    }
    loom_constraints_free(c);

    // No constraints at all.
    static const char *empties[] = {"", "\n\n", "# only a comment\n", "[]", "[]\n", "---\n",
                                    "~\n", "--- []\n...\n"};
    for (size_t i = 0; i < sizeof empties / sizeof *empties; i++) {
        c = PARSE_OK(empties[i]);
        CHECK_MSG(loom_constraints_count(c) == 0, "'%s' gave %d", empties[i],
                  loom_constraints_count(c));
        loom_constraints_free(c);
    }
    c = NULL;
    CHECK_OK(loom_constraints_parse(NULL, 0, NULL, &c));
    CHECK(c && loom_constraints_count(c) == 0);
    loom_constraints_free(c);
    loom_constraints_free(NULL);
    CHECK(loom_constraints_count(NULL) == 0 && loom_constraints_at(NULL, 0) == NULL);
}

static void test_aliases(void) {
    // PyYAML's dump writes anchors for a list object shared by several entries.
    loom_constraints_t c = PARSE_OK(
        "- name: a\n"
        "  allowed_partition_dims: &id001\n"
        "  - 0,0\n"
        "  - [1, 2]\n"
        "- name: b\n"
        "  allowed_partition_dims: *id001\n"
        "- &e {name: c, replica_allowed: false}\n"
        "- *e\n");
    CHECK(loom_constraints_count(c) == 4);
    const loom_partition_constraint *b = loom_constraints_at(c, 1), *e = loom_constraints_at(c, 3);
    if (b && e) {
        CHECK(b->n_allowed == 2 && b->allowed[1].input == 1 && b->allowed[1].dim == 2);
        CHECK(str_eq(e->name, "c") && e->replica_allowed == 0);
        CHECK_MSG(e->line == 8 && e->column == 3, "alias entry at %d:%d", e->line, e->column);
    }
    loom_constraints_free(c);
}

// ---- module matching and lookup ---------------------------------------------------------------------

static void test_module_matches(void) {
    static const struct { const char *path, *pattern; int want; } rows[] = {
        {"h.3.attn", "attn", 1},
        {"h.3.attn", "3.attn", 1},
        {"h.13.attn", "3.attn", 0},
        {"h.3.attn", "h.3.attn", 1},
        {"h.3.attn_out", "attn", 0},
        {"h.3.attn", "attn_out", 0},
        {"h.3.xattn", "attn", 0},
        {"attn", "h.3.attn", 0},  // pattern longer than the path
        {"x.module1", "module1", 1},
        {"y.module1", "module1", 1},
        {"x.module1", "x.module1", 1},
        {"y.module1", "x.module1", 0},
        {"h.3.attn", "", 1},  // empty pattern: any module (parent_module: '')
        {"", "", 1},
        {"", "attn", 0},
        {"h.3.attn", "h", 0},  // a prefix is not a suffix
        {"h.3.attn", "3", 0},
    };
    for (size_t i = 0; i < sizeof rows / sizeof *rows; i++)
        CHECK_MSG(loom_module_matches(rows[i].path, rows[i].pattern) == rows[i].want,
                  "'%s' vs pattern '%s' should give %d", rows[i].path, rows[i].pattern,
                  rows[i].want);
    CHECK(loom_module_matches("h.3.attn", NULL) == 1);
    CHECK(loom_module_matches(NULL, NULL) == 1);
    CHECK(loom_module_matches(NULL, "attn") == 0);
}

static void test_find(void) {
    loom_constraints_t c = PARSE_OK(
        "- name: loom.linear\n"               // 0: any module
        "- name: loom.linear\n"               // 1
        "  parent_module: attn\n"
        "- name: loom.linear\n"               // 2
        "  parent_module: 3.attn\n"
        "- name: loom.matmul\n"               // 3
        "  parent_module: attn\n"
        "- name: loom.linear\n"               // 4
        "  parent_module: mlp\n");
    int idx[8];
    memset(idx, -1, sizeof idx);
    CHECK(loom_constraints_find(c, "loom.linear", "h.3.attn", idx, 8) == 3);
    CHECK(idx[0] == 0 && idx[1] == 1 && idx[2] == 2 && idx[3] == -1);
    memset(idx, -1, sizeof idx);
    CHECK(loom_constraints_find(c, "loom.linear", "h.13.attn", idx, 8) == 2);
    CHECK(idx[0] == 0 && idx[1] == 1 && idx[2] == -1);
    CHECK(loom_constraints_find(c, "loom.linear", "h.3.mlp", idx, 8) == 2);
    CHECK(idx[0] == 0 && idx[1] == 4);
    CHECK(loom_constraints_find(c, "loom.linear", "", idx, 8) == 1);
    CHECK(loom_constraints_find(c, "loom.matmul", "h.3.mlp", idx, 8) == 0);
    CHECK(loom_constraints_find(c, "loom.matmul", "h.0.attn", idx, 8) == 1 && idx[0] == 3);
    CHECK(loom_constraints_find(c, "linear", "h.3.attn", idx, 8) == 0);  // exact signature
    // cap below the count: the count is still the total, only cap indices are written.
    memset(idx, -1, sizeof idx);
    CHECK(loom_constraints_find(c, "loom.linear", "h.3.attn", idx, 1) == 3);
    CHECK(idx[0] == 0 && idx[1] == -1);
    CHECK(loom_constraints_find(c, "loom.linear", "h.3.attn", NULL, 0) == 3);
    CHECK(loom_constraints_find(NULL, "loom.linear", "h.3.attn", idx, 8) == 0);
    CHECK(loom_constraints_find(c, NULL, "h.3.attn", idx, 8) == 0);
    loom_constraints_free(c);
}

// ---- errors -------------------------------------------------------------------------------------------

// Parsing `text` (len -1: strlen) must fail with `want` at line:col, the message naming
// "t.yaml" and containing `part`.
static void expect_error(const char *text, long len, loom_status want, int line, int col,
                         const char *part, int src_line) {
    loom_constraints_t c = (loom_constraints_t)(uintptr_t)1;
    size_t n = len < 0 ? strlen(text) : (size_t)len;
    loom_status st = loom_constraints_parse(text, n, "t.yaml", &c);
    const char *msg = loom_last_error();
    if (getenv("LOOM_TEST_VERBOSE")) fprintf(stderr, "  [%d] %s\n", src_line, msg);
    CHECK_MSG(st == want, "(line %d) status %s, expected %s: %s", src_line, loom_status_name(st),
              loom_status_name(want), msg);
    CHECK_MSG(c == NULL, "(line %d) *out not cleared on error", src_line);
    char where[64];
    snprintf(where, sizeof where, "t.yaml: line %d, column %d:", line, col);
    CHECK_MSG(strstr(msg, where) != NULL, "(line %d) expected '%s' in: %s", src_line, where, msg);
    CHECK_MSG(strstr(msg, part) != NULL, "(line %d) expected '%s' in: %s", src_line, part, msg);
    if (st == LOOM_OK) loom_constraints_free(c);
}
#define EXPECT_ERR(text, line, col, part) \
    expect_error(text, -1, LOOM_ERR_FORMAT, line, col, part, __LINE__)

static void test_yaml_errors(void) {
    // Tab indentation: libyaml refuses the tab where the line's first token would start.
    EXPECT_ERR("- name: a\n\tparent_module: b\n", 2, 1,
               "malformed YAML: found a tab character that violates indentation (while "
               "scanning a plain scalar at line 1, column 9)");
    EXPECT_ERR("-\tname: a\n", 1, 2,
               "malformed YAML: found character that cannot start any token");
    // Unclosed flow list: reported where the next token should have been, with its context.
    EXPECT_ERR("- name: a\n  allowed_partition_dims: [[0, 0], [1, 0]\n", 3, 1,
               "did not find expected ',' or ']' (while parsing a flow sequence at line 2, "
               "column 27)");
    EXPECT_ERR("- name: [a\n", 2, 1, "malformed YAML");
    EXPECT_ERR("- name: 'a\n", 2, 1, "found unexpected end of stream");
    EXPECT_ERR("- name: a\n  name2 b\n  x: y\n", 3, 3,
               "malformed YAML: could not find expected ':' (while scanning a simple key at "
               "line 2, column 3)");
    // Invalid UTF-8 and control characters: the reader's byte offset turned into a position.
    EXPECT_ERR("- name: a\n- name: b\xff\n", 2, 10, "invalid leading UTF-8 octet (#FF)");
    expect_error("- name: a\0b\n", 12, LOOM_ERR_FORMAT, 1, 10, "control characters are not allowed",
                 __LINE__);
    EXPECT_ERR("- name: a\n---\n- name: b\n", 2, 1, "a second YAML document");
    EXPECT_ERR("- name: *nope\n", 1, 9, "alias '*nope' names no earlier anchor");
    // Nesting deeper than 64 levels stops at the 65th opening bracket.
    char deep[400];
    memset(deep, '[', 200);
    memset(deep + 200, ']', 199);
    deep[399] = '\0';
    EXPECT_ERR(deep, 1, 65, "nested deeper than 64 levels");
}

static void test_structure_errors(void) {
    EXPECT_ERR("name: a\nparent_module: b\n", 1, 1,
               "the top level must be a list of constraint entries ('- name: ...'), found a "
               "mapping");
    EXPECT_ERR("\n\nhello\n", 3, 1, "top level must be a list of constraint entries");
    EXPECT_ERR("- name: a\n- just a string\n", 2, 3,
               "constraint entry 2 must be a mapping (name: ..., parent_module: ..., ...), found "
               "'just a string'");
    EXPECT_ERR("- name: a\n-\n- name: b\n", 2, 2, "constraint entry 2 must be a mapping");
    EXPECT_ERR("- [name, a]\n", 1, 3, "found a list");
    EXPECT_ERR("- name: a\n- parent_module: b\n  replica_allowed: true\n", 2, 3,
               "constraint entry 2 has no 'name'");
    EXPECT_ERR("- {}\n", 1, 3, "constraint entry 1 has no 'name'");
    EXPECT_ERR("- name: a\n  nmae: b\n", 2, 3,
               "unknown key 'nmae' in a constraint entry (valid keys: name, parent_module, "
               "allowed_partition_dims, replica_allowed)");
    EXPECT_ERR("- name: a\n  Name: b\n", 2, 3, "unknown key 'Name'");
    EXPECT_ERR("- name: a\n  replica_allowed: true\n  name: b\n", 3, 3,
               "duplicate key 'name' in a constraint entry (first at line 1, column 3)");
    EXPECT_ERR("- {name: a, replica_allowed: no, replica_allowed: no}\n", 1, 34,
               "duplicate key 'replica_allowed' in a constraint entry (first at line 1, column 13)");
    EXPECT_ERR("- {[a]: b, name: x}\n", 1, 4, "a key of a constraint entry must be a string, "
                                              "found a list");
}

static void test_type_errors(void) {
    EXPECT_ERR("- name: [a]\n", 1, 9, "name must be a string (the op signature");
    EXPECT_ERR("- name: {a: b}\n", 1, 9, "found a mapping");
    EXPECT_ERR("- name:\n  parent_module: x\n", 1, 8, "name is empty");  // just after ':'
    EXPECT_ERR("- name: ''\n", 1, 9, "name is empty");
    EXPECT_ERR("- name: \"a\\0b\"\n", 1, 9, "name contains a NUL character");
    EXPECT_ERR("- name: a\n  parent_module: [x]\n", 2, 18, "parent_module must be a string");
    EXPECT_ERR("- name: a\n  parent_module: .attn\n", 2, 18,
               "parent_module '.attn' has an empty component");
    EXPECT_ERR("- name: a\n  parent_module: h..attn\n", 2, 18, "empty component");
    EXPECT_ERR("- name: a\n  parent_module: attn.\n", 2, 18, "empty component");
    EXPECT_ERR("- name: a\n  allowed_partition_dims:\n  - a,b\n", 3, 5,
               "allowed_partition_dims entry 'a,b' is not 'input,dim'");
    EXPECT_ERR("- name: a\n  allowed_partition_dims:\n  - 0\n", 3, 5,
               "allowed_partition_dims entry '0' is not 'input,dim'");
    EXPECT_ERR("- name: a\n  allowed_partition_dims:\n  - 0,0,1\n", 3, 5, "is not 'input,dim'");
    EXPECT_ERR("- name: a\n  allowed_partition_dims:\n  - ''\n", 3, 5, "entry '' is not");
    EXPECT_ERR("- name: a\n  allowed_partition_dims:\n  - 0,0\n  - {0: 0}\n", 4, 5,
               "must be an 'input,dim' string or an [input, dim] list, found a mapping");
    EXPECT_ERR("- name: a\n  allowed_partition_dims: [[0, 1, 2]]\n", 2, 28,
               "allowed_partition_dims entry is a list of 3 elements; expected [input, dim]");
    EXPECT_ERR("- name: a\n  allowed_partition_dims: [[]]\n", 2, 28, "list of 0 elements");
    EXPECT_ERR("- name: a\n  allowed_partition_dims: [[0, x]]\n", 2, 32,
               "allowed_partition_dims element 'x' is not an integer");
    EXPECT_ERR("- name: a\n  allowed_partition_dims: [['0', 1]]\n", 2, 29,
               "element the quoted string '0' is not an integer");
    EXPECT_ERR("- name: a\n  allowed_partition_dims: [[0, 1.5]]\n", 2, 32, "'1.5' is not an integer");
    EXPECT_ERR("- name: a\n  allowed_partition_dims: [[0, [1]]]\n", 2, 32,
               "element a list is not an integer");
    EXPECT_ERR("- name: a\n  allowed_partition_dims: 0,0\n", 2, 27,
               "allowed_partition_dims must be a list of 'input,dim' strings or [input, dim] "
               "lists, found '0,0'");
    EXPECT_ERR("- name: a\n  allowed_partition_dims:\n  replica_allowed: true\n", 2, 26,
               "allowed_partition_dims is an empty value; write [] to allow no partition, or "
               "leave the key out to allow any");
    EXPECT_ERR("- name: a\n  allowed_partition_dims: null\n", 2, 27,
               "allowed_partition_dims is null");
    EXPECT_ERR("- name: a\n  allowed_partition_dims: ['0,9']\n", 2, 28, "dim 9 is outside [-8, 7]");
    EXPECT_ERR("- name: a\n  allowed_partition_dims: ['0,-9']\n", 2, 28, "dim -9 is outside [-8, 7]");
    EXPECT_ERR("- name: a\n  allowed_partition_dims: [[-1, 0]]\n", 2, 28,
               "input index -1 is outside [0, 255]");
    EXPECT_ERR("- name: a\n  allowed_partition_dims: [[256, 0]]\n", 2, 28, "input index 256");
    EXPECT_ERR("- name: a\n  allowed_partition_dims: ['99999999999999999999,0']\n", 2, 28,
               "input index 1000000000 is outside");
    EXPECT_ERR("- name: a\n  replica_allowed: maybe\n", 2, 20,
               "replica_allowed must be true or false, found 'maybe'");
    EXPECT_ERR("- name: a\n  replica_allowed: 'true'\n", 2, 20,
               "found the quoted string 'true'");
    EXPECT_ERR("- name: a\n  replica_allowed: 1\n", 2, 20, "found '1'");
    EXPECT_ERR("- name: a\n  replica_allowed: [true]\n", 2, 20, "found a list");
    EXPECT_ERR("- name: a\n  replica_allowed: ~\n", 2, 20, "found null");
    // A long value is shortened in the message.
    EXPECT_ERR("- name: a\n  replica_allowed: "
               "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
               "aaaaaaaaaaaa\n",
               2, 20, "aaaaa...'");
}

static void test_args_and_files(void) {
    loom_constraints_t c = (loom_constraints_t)(uintptr_t)1;
    CHECK(loom_constraints_parse(NULL, 3, "x", &c) == LOOM_ERR_INVALID && c == NULL);
    CHECK(loom_constraints_parse("[]", 2, "x", NULL) == LOOM_ERR_INVALID);
    CHECK(loom_constraints_load(NULL, &c) == LOOM_ERR_INVALID);
    CHECK(loom_constraints_load("x", NULL) == LOOM_ERR_INVALID);
    // Unnamed source.
    CHECK(loom_constraints_parse("- x: 1\n", 7, NULL, &c) == LOOM_ERR_FORMAT);
    CHECK(strstr(loom_last_error(), "<string>: line 1, column 3:") != NULL);

    if (tu_scratch_make("constraints") != 0) {
        CHECK_MSG(0, "cannot make a scratch directory");
        return;
    }
    const char *good = tu_path("pc.yaml");
    CHECK(tu_write_file(good, SEED, strlen(SEED)) == 0);
    c = NULL;
    CHECK_OK(loom_constraints_load(good, &c));
    CHECK(loom_constraints_count(c) == 4);
    loom_constraints_free(c);

    const char *bad = tu_path("bad.yaml");
    static const char bad_text[] = "- name: a\n  replica_allowed: sometimes\n";
    CHECK(tu_write_file(bad, bad_text, strlen(bad_text)) == 0);
    c = (loom_constraints_t)(uintptr_t)1;
    CHECK(loom_constraints_load(bad, &c) == LOOM_ERR_FORMAT && c == NULL);
    char where[600];
    snprintf(where, sizeof where, "%s: line 2, column 20: replica_allowed", bad);
    CHECK_MSG(strstr(loom_last_error(), where) != NULL, "%s", loom_last_error());

    const char *empty = tu_path("empty.yaml");
    CHECK(tu_write_file(empty, "", 0) == 0);
    c = NULL;
    CHECK_OK(loom_constraints_load(empty, &c));
    CHECK(c && loom_constraints_count(c) == 0);
    loom_constraints_free(c);

    const char *missing = tu_path("missing.yaml");
    c = (loom_constraints_t)(uintptr_t)1;
    CHECK_ERR(loom_constraints_load(missing, &c), LOOM_ERR_IO, missing, "No such file or directory");
    CHECK(c == NULL);
    CHECK_ERR(loom_constraints_load(tu_scratch, &c), LOOM_ERR_IO, tu_scratch, "Is a directory");
    CHECK(c == NULL);
    tu_remove_tree(tu_scratch);
}

// ---- scale and robustness ----------------------------------------------------------------------------

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static void test_large(void) {
    enum { N = 2000 };
    size_t cap = (size_t)N * 200, used = 0;
    char *text = malloc(cap);
    CHECK(text != NULL);
    if (!text) return;
    for (int i = 0; i < N; i++) {
        int w = snprintf(text + used, cap - used,
                         "- name: model.op%d\n"
                         "  parent_module: h.%d.attn\n"
                         "  allowed_partition_dims:\n"
                         "  - %d,%d\n"
                         "  - [%d, -1]\n"
                         "  replica_allowed: %s\n",
                         i, i % 48, i % 4, i % 3, i % 5, i % 2 ? "true" : "false");
        used += (size_t)w;
    }
    loom_constraints_t c = NULL;
    double t0 = now_s();
    CHECK_OK(loom_constraints_parse(text, used, "big.yaml", &c));
    double dt = now_s() - t0;
    CHECK_MSG(dt < 2.0, "2000 entries took %.3f s", dt);
    CHECK(loom_constraints_count(c) == N);
    const loom_partition_constraint *last = loom_constraints_at(c, N - 1);
    if (last) {
        CHECK(str_eq(last->name, "model.op1999") && str_eq(last->parent_module, "h.31.attn"));
        CHECK(last->n_allowed == 2 && last->allowed[0].input == 1999 % 4);
        CHECK(last->allowed[0].dim == 1999 % 3 && last->allowed[1].input == 1999 % 5);
        CHECK(last->allowed[1].dim == -1 && last->replica_allowed == 1);
        CHECK(last->line == 1 + 6 * (N - 1) && last->column == 3);
    }
    int idx[4];
    t0 = now_s();
    int hits = 0;
    for (int i = 0; i < N; i++) {
        char sig[32];
        snprintf(sig, sizeof sig, "model.op%d", i);
        hits += loom_constraints_find(c, sig, "model.h.31.attn", idx, 4);
    }
    CHECK_MSG(hits == 42, "hits %d", hits);  // i % 48 == 31 for i < 2000
    loom_constraints_free(c);
    free(text);
}

static uint32_t rng_state = 12345;
static uint32_t rng(void) {
    rng_state = rng_state * 1664525u + 1013904223u;
    return rng_state >> 8;
}

// Every prefix of a file and many random edits: the result is success or LOOM_ERR_FORMAT with a
// positioned message, never a crash or a leak (the sanitizer build checks the latter).
static void test_never_crash(void) {
    static const char base[] =
        "- name: a.b\n"
        "  parent_module: h.3.attn\n"
        "  allowed_partition_dims: &d [[0, 1], '1,0', [2, -1]]\n"
        "  replica_allowed: false\n"
        "- {name: c, allowed_partition_dims: *d}\n"
        "- &e\n"
        "  name: \"q\\tx\"\n"
        "  allowed_partition_dims: []\n"
        "- *e\n";
    size_t n = sizeof base - 1;
    int bad = 0;
    for (size_t cut = 0; cut <= n; cut++) {
        loom_constraints_t c = NULL;
        loom_status st = loom_constraints_parse(base, cut, "cut.yaml", &c);
        if (st == LOOM_OK) loom_constraints_free(c);
        else if (st != LOOM_ERR_FORMAT || !strstr(loom_last_error(), "cut.yaml: line ")) bad++;
    }
    static const char alphabet[] = "-:[]{},#&*!|>'\"%@` \n\t0a1.~\\";
    char buf[sizeof base + 8];
    int ok = 0;
    for (int iter = 0; iter < 4000; iter++) {
        memcpy(buf, base, sizeof base);
        size_t len = n;
        int edits = 1 + (int)(rng() % 3);
        for (int e = 0; e < edits; e++) {
            size_t at = rng() % len;
            uint32_t kind = rng() % 3;
            char ch = (rng() % 8) ? alphabet[rng() % (sizeof alphabet - 1)] : (char)(rng() & 0xff);
            if (kind == 0) {
                buf[at] = ch;
            } else if (kind == 1 && len < sizeof buf - 1) {
                memmove(buf + at + 1, buf + at, len - at);
                buf[at] = ch;
                len++;
            } else if (len > 1) {
                memmove(buf + at, buf + at + 1, len - at - 1);
                len--;
            }
        }
        loom_constraints_t c = NULL;
        loom_status st = loom_constraints_parse(buf, len, "fuzz.yaml", &c);
        if (st == LOOM_OK) {
            ok++;
            for (int i = 0; i < loom_constraints_count(c); i++)
                CHECK(loom_constraints_at(c, i)->name != NULL);
            loom_constraints_free(c);
        } else if (st != LOOM_ERR_FORMAT || !strstr(loom_last_error(), "fuzz.yaml: line ")) {
            bad++;
            fprintf(stderr, "unexpected: %s %s\n", loom_status_name(st), loom_last_error());
        }
    }
    CHECK_MSG(bad == 0, "%d inputs gave an unexpected status or message", bad);
    CHECK_MSG(ok > 0, "no mutated input parsed");
}

// Sets made in code: entries copied (the caller's buffers may go), the user's set and more
// entries combined into one, and bad entries refused.
static void test_create(void) {
    char name[] = "loom.linear", module[] = "attn.c_attn";
    loom_partition_dim dims[2] = {{0, -1}, {1, 0}};
    loom_partition_constraint items[2] = {
        {.name = name, .parent_module = module, .n_allowed = 2, .allowed = dims,
         .replica_allowed = 0, .line = 3},
        {.name = "loom.attention", .parent_module = "", .n_allowed = 0, .replica_allowed = 1}};
    loom_constraints_t c = NULL;
    CHECK_OK(loom_constraints_create(items, 2, &c));
    memset(name, 'x', sizeof name - 1), memset(module, 'x', sizeof module - 1);
    dims[0].dim = 5;
    CHECK(loom_constraints_count(c) == 2);
    const loom_partition_constraint *a = loom_constraints_at(c, 0), *b = loom_constraints_at(c, 1);
    CHECK(a && !strcmp(a->name, "loom.linear") && !strcmp(a->parent_module, "attn.c_attn"));
    CHECK(a && a->n_allowed == 2 && a->allowed[0].input == 0 && a->allowed[0].dim == -1 &&
          a->allowed[1].input == 1 && a->replica_allowed == 0 && a->line == 3);
    CHECK(b && b->parent_module == NULL && b->n_allowed == 0 && b->allowed == NULL &&
          b->replica_allowed == 1);
    CHECK(loom_constraints_find(c, "loom.linear", "h.3.attn.c_attn", NULL, 0) == 1);
    CHECK(loom_constraints_find(c, "loom.attention", "anything", NULL, 0) == 1);
    // A parsed set extended in code: its entries first, in order.
    static const char yaml[] = "- name: loom.embedding\n  replica_allowed: false\n";
    loom_constraints_t user = NULL;
    CHECK_OK(loom_constraints_parse(yaml, strlen(yaml), "user.yaml", &user));
    loom_partition_constraint all[3] = {*loom_constraints_at(user, 0), items[1], items[1]};
    loom_constraints_t both = NULL;
    CHECK_OK(loom_constraints_create(all, 3, &both));
    loom_constraints_free(user);
    CHECK(loom_constraints_count(both) == 3 &&
          !strcmp(loom_constraints_at(both, 0)->name, "loom.embedding") &&
          loom_constraints_at(both, 0)->replica_allowed == 0 &&
          loom_constraints_at(both, 0)->n_allowed == -1);
    loom_constraints_free(both);
    loom_constraints_free(c);
    // Empty sets and errors.
    CHECK_OK(loom_constraints_create(NULL, 0, &c));
    CHECK(c && loom_constraints_count(c) == 0);
    loom_constraints_free(c);
    loom_partition_constraint nameless = {.n_allowed = -1, .replica_allowed = 1};
    CHECK_ERR(loom_constraints_create(&nameless, 1, &c), LOOM_ERR_INVALID, "no name", NULL);
    CHECK(c == NULL);
    loom_partition_constraint dimless = {.name = "loom.linear", .n_allowed = 1};
    CHECK_ERR(loom_constraints_create(&dimless, 1, &c), LOOM_ERR_INVALID, "allowed dims", NULL);
    CHECK_ERR(loom_constraints_create(items, -1, &c), LOOM_ERR_INVALID, NULL, NULL);
    CHECK_ERR(loom_constraints_create(items, 1, NULL), LOOM_ERR_INVALID, NULL, NULL);
}

int main(void) {
    test_seed();
    test_create();
    test_dim_forms();
    test_absent_empty_defaults();
    test_aliases();
    test_module_matches();
    test_find();
    test_yaml_errors();
    test_structure_errors();
    test_type_errors();
    test_args_and_files();
    test_large();
    test_never_crash();
    return tu_finish();
}
