/*
 * Minimal printf family: %d %i %u %x %X %o %s %c %p %%, length modifiers
 * l, ll, z, h (ignored), width, and the '0' and '-' flags.
 */
#include "tiny.h"

struct out {
	int serial;		/* write to COM1 instead of buf */
	char *buf;
	size_t size;
	size_t len;
};

static void put(struct out *o, char c)
{
	if (o->serial)
		serial_putc(c);
	else if (o->len + 1 < o->size)
		o->buf[o->len] = c;
	o->len++;
}

static void put_padded(struct out *o, const char *s, size_t n, int width,
		       int left, char pad)
{
	int fill = width > (int)n ? width - (int)n : 0;

	if (!left) {
		/* keep a sign in front of zero padding */
		if (pad == '0' && n && *s == '-') {
			put(o, *s++);
			n--;
		}
		while (fill-- > 0)
			put(o, pad);
	}
	while (n--)
		put(o, *s++);
	while (left && fill-- > 0)
		put(o, ' ');
}

static size_t fmt_num(char *tmp, unsigned long long v, unsigned int base,
		      int upper, int neg)
{
	const char *digits = upper ? "0123456789ABCDEF" : "0123456789abcdef";
	char rev[24];
	size_t n = 0, i = 0;

	do {
		rev[n++] = digits[v % base];
		v /= base;
	} while (v);
	if (neg)
		tmp[i++] = '-';
	while (n)
		tmp[i++] = rev[--n];
	return i;
}

static int do_printf(struct out *o, const char *fmt, va_list ap)
{
	for (; *fmt; fmt++) {
		char tmp[26], pad = ' ';
		int left = 0, width = 0, lng = 0;
		unsigned long long u;
		long long s;
		const char *str;

		if (*fmt != '%') {
			put(o, *fmt);
			continue;
		}
		fmt++;
		for (;; fmt++) {
			if (*fmt == '0')
				pad = '0';
			else if (*fmt == '-')
				left = 1;
			else
				break;
		}
		while (*fmt >= '0' && *fmt <= '9')
			width = width * 10 + (*fmt++ - '0');
		for (;; fmt++) {
			if (*fmt == 'l' || *fmt == 'z')
				lng++;
			else if (*fmt != 'h')
				break;
		}
		if (left)
			pad = ' ';

		switch (*fmt) {
		case 'd':
		case 'i':
			s = lng ? va_arg(ap, long long) : va_arg(ap, int);
			u = s < 0 ? -(unsigned long long)s : (unsigned long long)s;
			put_padded(o, tmp, fmt_num(tmp, u, 10, 0, s < 0), width, left, pad);
			break;
		case 'u':
		case 'x':
		case 'X':
		case 'o':
			u = lng ? va_arg(ap, unsigned long long) : va_arg(ap, unsigned int);
			put_padded(o, tmp,
				   fmt_num(tmp, u, *fmt == 'u' ? 10 : *fmt == 'o' ? 8 : 16,
					   *fmt == 'X', 0),
				   width, left, pad);
			break;
		case 'p':
			u = (uintptr_t)va_arg(ap, void *);
			put(o, '0');
			put(o, 'x');
			put_padded(o, tmp, fmt_num(tmp, u, 16, 0, 0), width, left, pad);
			break;
		case 'c':
			tmp[0] = (char)va_arg(ap, int);
			put_padded(o, tmp, 1, width, left, ' ');
			break;
		case 's':
			str = va_arg(ap, const char *);
			if (!str)
				str = "(null)";
			put_padded(o, str, strlen(str), width, left, ' ');
			break;
		case '%':
			put(o, '%');
			break;
		case '\0':
			fmt--;
			break;
		default:
			put(o, '%');
			put(o, *fmt);
			break;
		}
	}
	return (int)o->len;
}

int vprintf(const char *fmt, va_list ap)
{
	struct out o = { 1, NULL, 0, 0 };

	return do_printf(&o, fmt, ap);
}

int printf(const char *fmt, ...)
{
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = vprintf(fmt, ap);
	va_end(ap);
	return n;
}

int vsnprintf(char *buf, size_t size, const char *fmt, va_list ap)
{
	struct out o = { 0, buf, size, 0 };
	int n = do_printf(&o, fmt, ap);

	if (size)
		buf[o.len < size ? o.len : size - 1] = '\0';
	return n;
}

int snprintf(char *buf, size_t size, const char *fmt, ...)
{
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = vsnprintf(buf, size, fmt, ap);
	va_end(ap);
	return n;
}
