/* pc — the small shared core of pullcache: one error space, logging, allocation helpers.
 *
 * Every module returns int: 0 is success, a negative value is an error. System and libuv
 * errors pass through as they are (-errno, UV_E*, which are the same numbers on Unix); our own
 * codes live in a range far below errno (PC_ERR_MAP). pc_strerror() names any of them, and
 * pc_err_status()/pc_err_code() give the HTTP status and OCI error code a client should see.
 */
#ifndef PC_H
#define PC_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

/* XX(name, value, http status, OCI code or NULL, message) */
#define PC_ERR_MAP(XX)                                                                             \
  XX(BLOB_UNKNOWN, -20001, 404, "BLOB_UNKNOWN", "blob unknown to registry")                        \
  XX(MANIFEST_UNKNOWN, -20002, 404, "MANIFEST_UNKNOWN", "manifest unknown to registry")            \
  XX(DIGEST_INVALID, -20003, 400, "DIGEST_INVALID", "provided digest did not match content")       \
  XX(NAME_INVALID, -20004, 400, "NAME_INVALID", "invalid repository name")                         \
  XX(NAME_UNKNOWN, -20005, 404, "NAME_UNKNOWN", "repository name not known to registry")           \
  XX(TAG_INVALID, -20006, 400, "TAG_INVALID", "manifest tag did not match URI")                    \
  XX(UNSUPPORTED, -20007, 405, "UNSUPPORTED", "the operation is unsupported")                      \
  XX(TOOMANYREQUESTS, -20008, 429, "TOOMANYREQUESTS", "too many requests")                         \
  XX(RANGE_INVALID, -20009, 416, NULL, "requested range not satisfiable")                          \
  XX(SIZE_INVALID, -20010, 400, "SIZE_INVALID", "provided length did not match content length")    \
  XX(DENIED, -20011, 403, "DENIED", "requested access to the resource is denied")                  \
  XX(UNAUTHORIZED, -20012, 401, "UNAUTHORIZED", "authentication required")                         \
  XX(NOTFOUND, -20020, 404, NULL, "not found")                                                     \
  XX(EXISTS, -20021, 409, NULL, "already exists")                                                  \
  XX(CORRUPT, -20022, 500, "UNKNOWN", "stored data is corrupt")                                    \
  XX(TOOBIG, -20023, 413, "SIZE_INVALID", "content exceeds the configured limit")                  \
  XX(UPSTREAM, -20030, 502, "UNAVAILABLE", "upstream registry failed")                             \
  XX(UPSTREAM_DIGEST, -20031, 502, "UNAVAILABLE", "upstream content did not match its digest")     \
  XX(UPSTREAM_TIMEOUT, -20032, 504, "UNAVAILABLE", "upstream registry timed out")                  \
  XX(UPSTREAM_UNAVAILABLE, -20033, 503, "UNAVAILABLE", "upstream registry unavailable")            \
  XX(UPSTREAM_UNKNOWN, -20034, 404, "NAME_UNKNOWN", "upstream not configured on this mirror")      \
  XX(OFFLINE, -20035, 404, NULL, "not in the cache and the mirror is offline")                     \
  XX(UPSTREAM_INVALID, -20036, 502, "UNAVAILABLE", "upstream answer was malformed")                \
  XX(UPSTREAM_BUSY, -20037, 503, "UNAVAILABLE", "upstream fetch waited too long in the queue")     \
  XX(LOOP, -20038, 508, "UNSUPPORTED", "request loop: this mirror is in the chain already")        \
  XX(INTERNAL, -20099, 500, "UNKNOWN", "internal error")

enum {
#define PC_ERR_GEN(name, val, st, code, msg) PC_E_##name = (val),
  PC_ERR_MAP(PC_ERR_GEN)
#undef PC_ERR_GEN
};

/** A static, human-readable message for any error value (ours, -errno, UV_E*). Never NULL. */
const char *pc_strerror(int err);
/** The symbolic name ("BLOB_UNKNOWN", "ENOENT", ...). Never NULL. */
const char *pc_errname(int err);
/** The HTTP status a client should see for err; 500 for system errors. */
int pc_err_status(int err);
/** The OCI error code string for err ("UNKNOWN" when it has none). Never NULL. */
const char *pc_err_code(int err);

/* Allocation: small allocations abort with file and line on failure (no untested error paths).
 * Sizes that come from the network must be checked against a cap before they get here. */
#define pc_xmalloc(n) pc__xmalloc((n), __FILE__, __LINE__)
#define pc_xcalloc(n, m) pc__xcalloc((n), (m), __FILE__, __LINE__)
#define pc_xrealloc(p, n) pc__xrealloc((p), (n), __FILE__, __LINE__)
#define pc_xstrdup(s) pc__xstrdup((s), __FILE__, __LINE__)
#define pc_xstrndup(s, n) pc__xstrndup((s), (n), __FILE__, __LINE__)
void *pc__xmalloc(size_t n, const char *file, int line);
void *pc__xcalloc(size_t n, size_t m, const char *file, int line);
void *pc__xrealloc(void *p, size_t n, const char *file, int line);
char *pc__xstrdup(const char *s, const char *file, int line);
char *pc__xstrndup(const char *s, size_t n, const char *file, int line);

#define container_of(ptr, type, member) ((type *)((char *)(ptr)-offsetof(type, member)))
#define PC_ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))

/* Logging: one line per event on stderr, text or JSON, journald priority prefix under systemd.
 *
 * Messages follow one convention, "event key=value key=value ...":
 * - the event is the first word (up to the first space): one token naming what happened,
 *   lowercase words joined by '-' ("store-lmdb-error", "upstream-timeout");
 * - every variable part is a field; keys are 1 to PC_LOG_KEY_MAX of [A-Za-z0-9_.-]
 *   (pc_log_key makes any string one);
 * - a value is written as is when it is plain (non-empty printable ASCII without space, '"',
 *   '\' or '='), else in double quotes with \" \\ and \xHH escapes: pc_log_quote does both.
 *   Tokens (pc_errname() names, digests, numbers, validated names) need no quoting; every
 *   other value (strerror and other error text, file paths, URLs, anything from the network)
 *   must go through it, so that it can neither end the line nor fake a field;
 * - an explanation for the reader is a quoted field too (hint="run fsck"), never bare words.
 *   The JSON format still copes with free text (see "msg" below); no message of ours has any.
 *
 * pc_log_setup(format) chooses the format and detects journald (see pc_log_journald). The
 * lines look like this (one write(2) each, at most PC_LOG_LINE_MAX bytes with the newline):
 *
 *   text:            2026-11-25T14:36:24.123Z info req method=GET path=/v2/ status=200
 *   text, journald:  <6>req method=GET path=/v2/ status=200
 *   json:            {"ts":"2026-11-25T14:36:24.123Z","level":"info","event":"req",
 *                     "method":"GET","path":"/v2/","status":200}          (on one line)
 *   json, journald:  <6>{"ts":...same object...}
 *
 * - Text: the timestamp is UTC with milliseconds and the level is one of emerg alert crit err
 *   warn notice info debug. Journald stamps lines itself, so there only the "<N>" prefix is
 *   written, which journald takes as the priority and strips. Control characters in the
 *   message are written as \xHH. An over-long line is cut.
 * - JSON: one object per line. Under journald the "<N>" prefix still comes first, because it
 *   is how the priority gets to journald, which strips it and stores the bare object as
 *   MESSAGE; "ts" and "level" stay in the object so that it is complete on its own.
 *   Fields, in this order: "ts", "level", "event", then one field per key=value in message
 *   order, then "msg" and "truncated" when they apply.
 *   - An unquoted value that is a plain decimal integer (optional '-', no leading zero, not
 *     "-0", fits int64) becomes a JSON integer; any other value (every quoted one included)
 *     is a string, its quoting undone.
 *   - The first token that does not fit the convention (no '=', a bad key, a malformed quoted
 *     value, a '"' or control character inside an unquoted value) starts free text: from
 *     there to the end, the message goes verbatim into "msg".
 *   - A key seen twice (or named "ts", "level", "event", "msg", "truncated") is kept under
 *     the first free name among key_2, key_3, ...: nothing is overwritten or lost.
 *   - Bytes that are not valid UTF-8 appear as the four characters \xHH in strings.
 *   - A line too long for the cap is rebuilt from the longest prefix of the message that
 *     fits, with "truncated":true (also set when the message was cut while formatting); an
 *     unquoted value reaching the cut counts as free text (it goes to "msg"), so no field
 *     holds a shortened number.
 *   - If jansson fails (out of memory), that one line is written in the text format.
 * Levels above pc_log_level are dropped before the arguments are even evaluated. Any thread
 * may log; errno is preserved. The level and the format may change at any time (a reload sets
 * them on the loop thread while workers log): both are atomics, read with relaxed loads, so a
 * line logged meanwhile uses the old or the new value, each whole.
 */
enum { PC_LOG_ERR = 3, PC_LOG_WARN = 4, PC_LOG_NOTICE = 5, PC_LOG_INFO = 6, PC_LOG_DEBUG = 7 };
enum { PC_LOG_TEXT, PC_LOG_JSON };
#define PC_LOG_LINE_MAX 4096 /**< bytes per line with its newline (PIPE_BUF: atomic on pipes) */
#define PC_LOG_KEY_MAX 64    /**< longest key the JSON format takes as a field name */
/** The size pc_log_quote needs for a value cut at max bytes, NUL included. */
#define PC_LOG_QUOTE_SIZE(max) (4 * (size_t)(max) + 6)

/** Messages above this level are dropped before formatting. Set it from any thread with a
 * plain assignment (an atomic store). */
extern _Atomic int pc_log_level;
/** PC_LOG_TEXT (default) or PC_LOG_JSON; set by pc_log_setup. */
extern _Atomic int pc_log_format;

/** Choose the format (PC_LOG_TEXT or PC_LOG_JSON; anything else is text) and detect whether
 * stderr is the journal. Call it at startup, again after redirecting stderr, and on a reload
 * (other threads may be logging meanwhile). Without it, lines are text and journald is detected
 * on the first line. */
void pc_log_setup(int format);
/** 1 when stderr is the systemd journal: $JOURNAL_STREAM ("DEV:INODE") names the device and
 * inode of fd 2 (systemd sets it for services whose output goes to the journal; a child whose
 * stderr was redirected inherits the variable but not the match). As of the last pc_log_setup
 * (or the first line logged). */
int pc_log_journald(void);
/** Write value as a log value: as is when plain (see above), else quoted and escaped. A value
 * longer than max bytes is cut to max bytes and "..." appended (inside the quotes when
 * quoted). Like snprintf: writes at most dstlen bytes, NUL included (dst may be NULL when
 * dstlen is 0), and returns the length of the whole output; a return >= dstlen means dst holds
 * an unusable partial value. PC_LOG_QUOTE_SIZE(max) bytes always suffice. */
size_t pc_log_quote(char *dst, size_t dstlen, const char *value, size_t max);
/** Write key as a log key: characters outside [A-Za-z0-9_.-] become '_', cut to
 * PC_LOG_KEY_MAX bytes and to dstlen - 1. Returns its length (0 for an empty key: no key). */
size_t pc_log_key(char *dst, size_t dstlen, const char *key);

#define pc_log(lvl, ...)                                                                           \
  do {                                                                                             \
    if ((lvl) > atomic_load_explicit(&pc_log_level, memory_order_relaxed))                         \
      break;                                                                                       \
    pc__log((lvl), __VA_ARGS__);                                                                   \
  } while (0)
/** Log one line at level lvl (0..7), without looking at pc_log_level. */
void pc__log(int lvl, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/** pc_log(lvl, "%.*s", len, msg) without the formatting (the access log's hot path); a
 * message longer than a line is cut as pc_log would cut it. */
#define pc_log_str(lvl, msg, len)                                                                  \
  do {                                                                                             \
    if ((lvl) > atomic_load_explicit(&pc_log_level, memory_order_relaxed))                         \
      break;                                                                                       \
    pc__log_str((lvl), (msg), (len));                                                              \
  } while (0)
void pc__log_str(int lvl, const char *msg, size_t len);
/** pc_log_str for a message that holds no control character by construction (constants,
 * numbers, pc_log_key keys and pc_log_quote values, as the access log's line is): the text
 * format copies it without looking for characters to escape. */
#define pc_log_str_plain(lvl, msg, len)                                                            \
  do {                                                                                             \
    if ((lvl) > atomic_load_explicit(&pc_log_level, memory_order_relaxed))                         \
      break;                                                                                       \
    pc__log_str_plain((lvl), (msg), (len));                                                        \
  } while (0)
void pc__log_str_plain(int lvl, const char *msg, size_t len);

/** Always-on assertion: logs the expression, file and line at level 2 (crit), then aborts.
 * pc_fatal and PC_ASSERT write "fatal file=F line=N reason=R", R being the formatted text
 * (quoted); running out of memory in pc_x* writes reason="out of memory" bytes=N. */
#define PC_ASSERT(e)                                                                               \
  do {                                                                                             \
    if (!(e))                                                                                      \
      pc__fatal(__FILE__, __LINE__, "assertion failed: %s", #e);                                   \
  } while (0)
#define pc_fatal(...) pc__fatal(__FILE__, __LINE__, __VA_ARGS__)
_Noreturn void pc__fatal(const char *file, int line, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/** The version `pullcache version` and /metrics report. */
#define PC_VERSION "0.1.0"

/** The value of one hex digit (either case), or -1. */
int pc_hexval(int c);

/** Wall-clock seconds since the epoch (for metadata timestamps). */
int64_t pc_now_sec(void);
/** Monotonic milliseconds (for durations). */
uint64_t pc_mono_ms(void);

#endif
