/* A small, bounded JSON reader and writer for the agent's control messages. */
#ifndef AGENT_JSON_H
#define AGENT_JSON_H

#include <stddef.h>
#include <stdint.h>

enum { J_OBJ = 1, J_ARR, J_STR, J_NUM, J_TRUE, J_FALSE, J_NULL };

struct jtok {
    int type;
    int start, end;     /* byte range in the text (strings: inside the quotes) */
    int size;           /* objects: members; arrays: elements */
    int next;           /* index of the token after this one's subtree */
};

#define JSON_MAX_TOKENS 4096
#define JSON_MAX_DEPTH  16

struct jdoc {
    const char *text;
    int len;
    int ntok;
    struct jtok tok[JSON_MAX_TOKENS];
};

/* Parse text[0..len); 0 on success, -EINVAL for bad JSON, -E2BIG for too many tokens/depth. */
int json_parse(struct jdoc *d, const char *text, size_t len);
/* Index of the value of member `key` of object token `obj`, or -1. */
int json_get(const struct jdoc *d, int obj, const char *key);
/* Decode string token `t` into out (NUL-terminated, at most cap-1 bytes); length or -errno.
 * Embedded NULs (\u0000) are refused. */
int json_str(const struct jdoc *d, int t, char *out, size_t cap);
/* Integer value of token `t` within [lo, hi]; 0 or -EINVAL. */
int json_int(const struct jdoc *d, int t, int64_t lo, int64_t hi, int64_t *out);
/* 1 for true, 0 for false, -EINVAL otherwise. */
int json_bool(const struct jdoc *d, int t);
/* i-th element of array token `arr` (linear walk), or -1. */
int json_elem(const struct jdoc *d, int arr, int i);

/* Writer: append to a fixed buffer; `err` is set when it would overflow. */
struct jw {
    char *buf;
    size_t cap, len;
    int err, first;
};
void jw_init(struct jw *w, char *buf, size_t cap);
void jw_obj_begin(struct jw *w);
void jw_obj_end(struct jw *w);
void jw_key_str(struct jw *w, const char *key, const char *val);
void jw_key_int(struct jw *w, const char *key, int64_t val);
void jw_key_bool(struct jw *w, const char *key, int val);
void jw_key_raw(struct jw *w, const char *key, const char *raw);  /* raw JSON value */

#endif
