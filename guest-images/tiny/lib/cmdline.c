/* Kernel command line: whitespace-separated tokens, "key=value" options. */
#include "tiny.h"

static int is_space(char c)
{
	return c == ' ' || c == '\t' || c == '\n' || c == '\r';
}

int cmdline_next(const char **pos, char *buf, size_t size)
{
	const char *p = *pos;
	size_t len = 0;

	if (!p)
		return -1;
	while (is_space(*p))
		p++;
	if (!*p) {
		*pos = p;
		return -1;
	}
	while (*p && !is_space(*p)) {
		if (size && len < size - 1)
			buf[len] = *p;
		len++;
		p++;
	}
	if (size)
		buf[len < size ? len : size - 1] = '\0';
	*pos = p;
	return (int)len;
}

int cmdline_get(const char *cmdline, const char *key, char *buf, size_t size)
{
	size_t klen = strlen(key);
	const char *p = cmdline;
	char tok[TINY_CMDLINE_TOKEN_MAX];

	while (cmdline_next(&p, tok, sizeof(tok)) >= 0) {
		if (!strncmp(tok, key, klen) && tok[klen] == '=') {
			size_t n = strnlen(tok + klen + 1, size ? size - 1 : 0);

			memcpy(buf, tok + klen + 1, n);
			if (size)
				buf[n] = '\0';
			return 0;
		}
	}
	return -1;
}

int cmdline_has(const char *cmdline, const char *word)
{
	const char *p = cmdline;
	char tok[TINY_CMDLINE_TOKEN_MAX];

	while (cmdline_next(&p, tok, sizeof(tok)) >= 0)
		if (!strcmp(tok, word))
			return 1;
	return 0;
}

int cmdline_arg(const char *cmdline, int index, char *buf, size_t size)
{
	const char *p = cmdline;

	while (cmdline_next(&p, buf, size) >= 0) {
		if (strchr(buf, '='))
			continue;
		if (index-- == 0)
			return 0;
	}
	if (size)
		buf[0] = '\0';
	return -1;
}
