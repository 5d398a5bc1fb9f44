/*
 * JSON for control messages: a tokenizer in the style of jsmn (flat token array, bounded
 * count and depth), typed getters, and an escaping writer. Everything is checked: the host
 * is trusted more than a guest, but the parser is fed by a socket.
 */
#include "json.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

static int is_ws(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; }

struct pstate {
    struct jdoc *d;
    int pos, depth;
};

static int parse_value(struct pstate *p);

static void skip_ws(struct pstate *p)
{
    while (p->pos < p->d->len && is_ws(p->d->text[p->pos]))
        p->pos++;
}

static int new_tok(struct pstate *p, int type, int start)
{
    if (p->d->ntok >= JSON_MAX_TOKENS)
        return -E2BIG;
    int i = p->d->ntok++;
    p->d->tok[i] = (struct jtok){ .type = type, .start = start, .end = start };
    return i;
}

static int parse_string(struct pstate *p, int *tok)
{
    const char *s = p->d->text;
    int start = ++p->pos;   /* past the quote */
    while (p->pos < p->d->len) {
        unsigned char c = s[p->pos];
        if (c == '"') {
            int t = new_tok(p, J_STR, start);
            if (t < 0)
                return t;
            p->d->tok[t].end = p->pos++;
            p->d->tok[t].next = t + 1;
            *tok = t;
            return 0;
        }
        if (c < 0x20)
            return -EINVAL;
        if (c == '\\') {
            if (++p->pos >= p->d->len)
                return -EINVAL;
            c = s[p->pos];
            if (c == 'u') {
                for (int k = 1; k <= 4; k++) {
                    if (p->pos + k >= p->d->len)
                        return -EINVAL;
                    char h = s[p->pos + k];
                    if (!((h >= '0' && h <= '9') || (h >= 'a' && h <= 'f') || (h >= 'A' && h <= 'F')))
                        return -EINVAL;
                }
                p->pos += 4;
            } else if (!strchr("\"\\/bfnrt", c)) {
                return -EINVAL;
            }
        }
        p->pos++;
    }
    return -EINVAL;
}

static int parse_literal(struct pstate *p, int *tok)
{
    const char *s = p->d->text + p->pos;
    int left = p->d->len - p->pos, type = 0, n = 0;
    if (left >= 4 && !memcmp(s, "true", 4))
        type = J_TRUE, n = 4;
    else if (left >= 5 && !memcmp(s, "false", 5))
        type = J_FALSE, n = 5;
    else if (left >= 4 && !memcmp(s, "null", 4))
        type = J_NULL, n = 4;
    else {
        /* number: -?digits(.digits)?([eE][+-]?digits)? */
        int i = 0, digits = 0;
        if (i < left && s[i] == '-')
            i++;
        while (i < left && s[i] >= '0' && s[i] <= '9')
            i++, digits++;
        if (!digits)
            return -EINVAL;
        if (i < left && s[i] == '.') {
            i++;
            int fd = 0;
            while (i < left && s[i] >= '0' && s[i] <= '9')
                i++, fd++;
            if (!fd)
                return -EINVAL;
        }
        if (i < left && (s[i] == 'e' || s[i] == 'E')) {
            i++;
            if (i < left && (s[i] == '+' || s[i] == '-'))
                i++;
            int ed = 0;
            while (i < left && s[i] >= '0' && s[i] <= '9')
                i++, ed++;
            if (!ed)
                return -EINVAL;
        }
        type = J_NUM, n = i;
    }
    int t = new_tok(p, type, p->pos);
    if (t < 0)
        return t;
    p->pos += n;
    p->d->tok[t].end = p->pos;
    p->d->tok[t].next = t + 1;
    *tok = t;
    return 0;
}

static int parse_container(struct pstate *p, int *tok, int is_obj)
{
    if (++p->depth > JSON_MAX_DEPTH)
        return -E2BIG;
    int t = new_tok(p, is_obj ? J_OBJ : J_ARR, p->pos);
    if (t < 0)
        return t;
    char close = is_obj ? '}' : ']';
    p->pos++;
    skip_ws(p);
    if (p->pos < p->d->len && p->d->text[p->pos] == close) {
        p->pos++;
        goto done;
    }
    for (;;) {
        skip_ws(p);
        if (is_obj) {
            int k;
            if (p->pos >= p->d->len || p->d->text[p->pos] != '"')
                return -EINVAL;
            int rc = parse_string(p, &k);
            if (rc)
                return rc;
            skip_ws(p);
            if (p->pos >= p->d->len || p->d->text[p->pos] != ':')
                return -EINVAL;
            p->pos++;
        }
        int rc = parse_value(p);
        if (rc)
            return rc;
        p->d->tok[t].size++;
        skip_ws(p);
        if (p->pos >= p->d->len)
            return -EINVAL;
        char c = p->d->text[p->pos++];
        if (c == close)
            break;
        if (c != ',')
            return -EINVAL;
    }
done:
    p->d->tok[t].end = p->pos;
    p->d->tok[t].next = p->d->ntok;
    p->depth--;
    *tok = t;
    return 0;
}

static int parse_value(struct pstate *p)
{
    int t;
    skip_ws(p);
    if (p->pos >= p->d->len)
        return -EINVAL;
    char c = p->d->text[p->pos];
    if (c == '{')
        return parse_container(p, &t, 1);
    if (c == '[')
        return parse_container(p, &t, 0);
    if (c == '"')
        return parse_string(p, &t);
    return parse_literal(p, &t);
}

int json_parse(struct jdoc *d, const char *text, size_t len)
{
    if (len > 0x7fffffff)
        return -E2BIG;
    d->text = text;
    d->len = (int)len;
    d->ntok = 0;
    struct pstate p = { .d = d };
    int rc = parse_value(&p);
    if (rc)
        return rc;
    skip_ws(&p);
    return p.pos == d->len ? 0 : -EINVAL;
}

/* does string token t equal key (no escapes in keys we look up) */
static int key_eq(const struct jdoc *d, int t, const char *key)
{
    size_t n = strlen(key);
    return d->tok[t].type == J_STR && (size_t)(d->tok[t].end - d->tok[t].start) == n &&
           !memcmp(d->text + d->tok[t].start, key, n);
}

int json_get(const struct jdoc *d, int obj, const char *key)
{
    if (obj < 0 || obj >= d->ntok || d->tok[obj].type != J_OBJ)
        return -1;
    int i = obj + 1;
    for (int m = 0; m < d->tok[obj].size; m++) {
        int v = i + 1;
        if (key_eq(d, i, key))
            return v;
        i = d->tok[v].next;
    }
    return -1;
}

int json_elem(const struct jdoc *d, int arr, int idx)
{
    if (arr < 0 || arr >= d->ntok || d->tok[arr].type != J_ARR || idx < 0 || idx >= d->tok[arr].size)
        return -1;
    int i = arr + 1;
    while (idx--)
        i = d->tok[i].next;
    return i;
}

static int hexval(char h)
{
    return h <= '9' ? h - '0' : (h | 0x20) - 'a' + 10;
}

static int put_utf8(char *out, size_t cap, size_t *n, uint32_t cp)
{
    char b[4];
    int k;
    if (cp < 0x80)
        b[0] = cp, k = 1;
    else if (cp < 0x800)
        b[0] = 0xc0 | (cp >> 6), b[1] = 0x80 | (cp & 0x3f), k = 2;
    else if (cp < 0x10000)
        b[0] = 0xe0 | (cp >> 12), b[1] = 0x80 | ((cp >> 6) & 0x3f), b[2] = 0x80 | (cp & 0x3f), k = 3;
    else
        b[0] = 0xf0 | (cp >> 18), b[1] = 0x80 | ((cp >> 12) & 0x3f),
        b[2] = 0x80 | ((cp >> 6) & 0x3f), b[3] = 0x80 | (cp & 0x3f), k = 4;
    if (*n + k >= cap)
        return -ENAMETOOLONG;
    memcpy(out + *n, b, k);
    *n += k;
    return 0;
}

int json_str(const struct jdoc *d, int t, char *out, size_t cap)
{
    if (t < 0 || t >= d->ntok || d->tok[t].type != J_STR || cap == 0)
        return -EINVAL;
    const char *s = d->text;
    size_t n = 0;
    for (int i = d->tok[t].start; i < d->tok[t].end; i++) {
        char c = s[i];
        if (c != '\\') {
            if (n + 1 >= cap)
                return -ENAMETOOLONG;
            out[n++] = c;
            continue;
        }
        c = s[++i];   /* the tokenizer checked every escape is complete */
        uint32_t cp;
        switch (c) {
        case 'b': cp = '\b'; break;
        case 'f': cp = '\f'; break;
        case 'n': cp = '\n'; break;
        case 'r': cp = '\r'; break;
        case 't': cp = '\t'; break;
        case 'u':
            cp = hexval(s[i + 1]) << 12 | hexval(s[i + 2]) << 8 | hexval(s[i + 3]) << 4 | hexval(s[i + 4]);
            i += 4;
            if (cp >= 0xd800 && cp < 0xdc00 && i + 6 < d->tok[t].end && s[i + 1] == '\\' && s[i + 2] == 'u') {
                uint32_t lo = hexval(s[i + 3]) << 12 | hexval(s[i + 4]) << 8 | hexval(s[i + 5]) << 4 | hexval(s[i + 6]);
                if (lo >= 0xdc00 && lo < 0xe000) {
                    cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
                    i += 6;
                }
            }
            if (cp == 0)
                return -EINVAL;
            break;
        default: cp = (unsigned char)c; break;
        }
        int rc = put_utf8(out, cap, &n, cp);
        if (rc)
            return rc;
    }
    out[n] = 0;
    return (int)n;
}

int json_int(const struct jdoc *d, int t, int64_t lo, int64_t hi, int64_t *out)
{
    if (t < 0 || t >= d->ntok || d->tok[t].type != J_NUM)
        return -EINVAL;
    const char *s = d->text + d->tok[t].start;
    int n = d->tok[t].end - d->tok[t].start, i = 0, neg = 0;
    int64_t v = 0;
    if (s[0] == '-')
        neg = 1, i = 1;
    for (; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return -EINVAL;          /* fractions and exponents are not integers */
        if (v > (INT64_MAX - 9) / 10)
            return -EINVAL;
        v = v * 10 + (s[i] - '0');
    }
    if (neg)
        v = -v;
    if (v < lo || v > hi)
        return -EINVAL;
    *out = v;
    return 0;
}

int json_bool(const struct jdoc *d, int t)
{
    if (t < 0 || t >= d->ntok)
        return -EINVAL;
    return d->tok[t].type == J_TRUE ? 1 : d->tok[t].type == J_FALSE ? 0 : -EINVAL;
}

/* --- writer --- */

void jw_init(struct jw *w, char *buf, size_t cap)
{
    *w = (struct jw){ .buf = buf, .cap = cap, .first = 1 };
    if (cap)
        buf[0] = 0;
}

static void jw_put(struct jw *w, const char *s, size_t n)
{
    if (w->err || w->len + n + 1 > w->cap) {
        w->err = 1;
        return;
    }
    memcpy(w->buf + w->len, s, n);
    w->len += n;
    w->buf[w->len] = 0;
}

static void jw_string(struct jw *w, const char *s)
{
    jw_put(w, "\"", 1);
    for (; *s; s++) {
        unsigned char c = *s;
        char esc[8];
        if (c == '"' || c == '\\') {
            esc[0] = '\\', esc[1] = c;
            jw_put(w, esc, 2);
        } else if (c < 0x20) {
            snprintf(esc, sizeof(esc), "\\u%04x", c);
            jw_put(w, esc, 6);
        } else {
            jw_put(w, (const char *)&c, 1);
        }
    }
    jw_put(w, "\"", 1);
}

static void jw_key(struct jw *w, const char *key)
{
    if (!w->first)
        jw_put(w, ",", 1);
    w->first = 0;
    jw_string(w, key);
    jw_put(w, ":", 1);
}

void jw_obj_begin(struct jw *w) { jw_put(w, "{", 1); w->first = 1; }
void jw_obj_end(struct jw *w) { jw_put(w, "}", 1); w->first = 0; }
void jw_key_str(struct jw *w, const char *key, const char *val) { jw_key(w, key); jw_string(w, val); }
void jw_key_raw(struct jw *w, const char *key, const char *raw) { jw_key(w, key); jw_put(w, raw, strlen(raw)); }

void jw_key_int(struct jw *w, const char *key, int64_t val)
{
    char b[32];
    int n = snprintf(b, sizeof(b), "%lld", (long long)val);
    jw_key(w, key);
    jw_put(w, b, n);
}

void jw_key_bool(struct jw *w, const char *key, int val)
{
    jw_key(w, key);
    jw_put(w, val ? "true" : "false", val ? 4 : 5);
}
