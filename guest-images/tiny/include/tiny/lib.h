/* The tiny guest library: serial console, printf, strings, cmdline, exits. */
#ifndef TINY_LIB_H
#define TINY_LIB_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

/* ---- devices and ports ---------------------------------------------- */
#define COM1_PORT		0x3f8
#define DEBUG_EXIT_PORT		0xf4	/* isa-debug-exit: status (v << 1) | 1 */
#define I8042_CMD_PORT		0x64	/* write 0xfe: reset (kvmvm: clean stop) */
#define POST_PORT		0x80

/* ---- serial (COM1, polled, no interrupts) ------------------------------ */
void serial_putc(char c);
void serial_write(const char *s, size_t n);
void serial_puts(const char *s);	/* no newline added */

/* ---- formatted output: %d %i %u %x %X %s %c %p %%, l/ll/z, width, 0/- */
int printf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
int vprintf(const char *fmt, va_list ap);
int snprintf(char *buf, size_t size, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));
int vsnprintf(char *buf, size_t size, const char *fmt, va_list ap);

/* ---- strings ------------------------------------------------------------ */
void *memset(void *s, int c, size_t n);
void *memcpy(void *dst, const void *src, size_t n);
void *memmove(void *dst, const void *src, size_t n);
int memcmp(const void *a, const void *b, size_t n);
size_t strlen(const char *s);
size_t strnlen(const char *s, size_t max);
int strcmp(const char *a, const char *b);
int strncmp(const char *a, const char *b, size_t n);
char *strchr(const char *s, int c);
unsigned long strtoul(const char *s, char **end, int base);
long strtol(const char *s, char **end, int base);

/*
 * Parse a whole string as an unsigned number (base 0: "0x.." hex, "0.."
 * octal, else decimal). Returns 0 and sets *out on success, -1 if the
 * string is empty or has trailing garbage.
 */
int parse_ulong(const char *s, unsigned long *out);

/* ---- kernel command line (whitespace-separated tokens) ----------------- */
/*
 * Copy the next token of *pos into buf (NUL-terminated, truncated to
 * size - 1) and advance *pos. Returns the token length, or -1 at the end.
 */
int cmdline_next(const char **pos, char *buf, size_t size);
/* Value of the first "key=value" token into buf; 0 if found, -1 if not. */
int cmdline_get(const char *cmdline, const char *key, char *buf, size_t size);
/* Non-zero if a token equals word exactly. */
int cmdline_has(const char *cmdline, const char *word);
/* The index'th token that has no '=' in it (0-based); 0 if found, -1 if not. */
int cmdline_arg(const char *cmdline, int index, char *buf, size_t size);

/* ---- ending the VM ------------------------------------------------------ */
/* Success: i8042 reset (kvmvm: status 0), then a triple fault (QEMU -no-reboot). */
void tiny_success(void) __attribute__((noreturn));
/* Write v to the debug-exit port; if still running, triple fault. */
void debug_exit(uint8_t v) __attribute__((noreturn));
/* Load a zero-limit IDT and raise #UD: #UD -> #GP -> #DF -> shutdown. */
void triple_fault(void) __attribute__((noreturn));
/* cli; hlt forever. */
void halt_forever(void) __attribute__((noreturn));
/* Print "panic: ...", then debug_exit(0x7f) (host status 255). */
void panic(const char *fmt, ...) __attribute__((noreturn, format(printf, 1, 2)));

/* ---- memory ------------------------------------------------------------- */
extern char __image_start[], __image_end[];
/*
 * Bump allocator over the RAM region that holds the end of the image.
 * Returns zeroed memory aligned to align (a power of two), or NULL.
 */
void *tiny_alloc(size_t size, size_t align);
static inline void *tiny_alloc_pages(size_t npages)
{
	return tiny_alloc(npages * 4096, 4096);
}

#endif
