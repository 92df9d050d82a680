/*
 * Sprite volume URLs
 *
 * Copyright (c) 2026 The Sprite authors
 * SPDX-License-Identifier: GPL-2.0-or-later
 *
 * Three forms (DESIGN.md section 2):
 *   sprite://HOST[:PORT]/BUCKET/VOLUME        S3 over HTTPS
 *   sprite+http://HOST[:PORT]/BUCKET/VOLUME   S3 over plain HTTP
 *   sprite+file:///ABSOLUTE/DIR/VOLUME        local directory DIR
 *
 * The parser is strict on purpose: a URL names a volume, and a typo that
 * silently names another one (a different bucket, a relative directory)
 * is worse than an error.  HOST is a DNS name, an IPv4 address or a
 * bracketed IPv6 address; it is lowercased.  The file path may contain
 * %XX escapes (for spaces and the like) but no "." or ".." components.
 */

#include <errno.h>
#include <string.h>

#include "objstore/objstore-int.h"

G_DEFINE_QUARK(sprite-error-quark, sprite_error)

#define VOLUME_NAME_MAX 255

typedef struct SchemeName {
    const char *prefix;
    SpriteObjstoreScheme scheme;
} SchemeName;

static const SchemeName schemes[] = {
    { "sprite://", SPRITE_SCHEME_HTTPS },
    { "sprite+http://", SPRITE_SCHEME_HTTP },
    { "sprite+file://", SPRITE_SCHEME_FILE },
};

static bool url_fail(GError **errp, const char *url, const char *fmt, ...)
    G_GNUC_PRINTF(3, 4);

/* Always returns false, so that callers can "return url_fail(...)". */
static bool url_fail(GError **errp, const char *url, const char *fmt, ...)
{
    va_list ap;
    g_autofree char *msg = NULL;

    va_start(ap, fmt);
    msg = g_strdup_vprintf(fmt, ap);
    va_end(ap);
    g_set_error(errp, SPRITE_ERROR, EINVAL, "invalid volume URL '%s': %s",
                url, msg);
    return false;
}

static bool volume_name_valid(const char *url, const char *name,
                              GError **errp)
{
    size_t len = strlen(name);

    if (len == 0) {
        return url_fail(errp, url, "missing volume name");
    }
    if (len > VOLUME_NAME_MAX) {
        return url_fail(errp, url, "volume name longer than %d characters",
                        VOLUME_NAME_MAX);
    }
    if (!strcmp(name, ".") || !strcmp(name, "..")) {
        return url_fail(errp, url, "'%s' is not a volume name", name);
    }
    for (const char *p = name; *p; p++) {
        if (!g_ascii_isalnum(*p) && *p != '.' && *p != '_' && *p != '-') {
            return url_fail(errp, url,
                            "volume name '%s' may only contain letters, "
                            "digits, '.', '_' and '-'", name);
        }
    }
    return true;
}

static bool looks_like_ipv4(const char *s)
{
    int dots = 0;

    for (const char *p = s; *p; p++) {
        if (*p == '.') {
            dots++;
        } else if (!g_ascii_isdigit(*p)) {
            return false;
        }
    }
    return dots == 3;
}

/* The S3 bucket naming rules (the ones every S3 server enforces). */
static bool bucket_name_valid(const char *url, const char *name,
                              GError **errp)
{
    size_t len = strlen(name);

    if (len == 0) {
        return url_fail(errp, url, "missing bucket name");
    }
    if (len < 3 || len > 63) {
        return url_fail(errp, url,
                        "bucket name '%s' must be 3 to 63 characters long",
                        name);
    }
    for (const char *p = name; *p; p++) {
        if (!g_ascii_islower(*p) && !g_ascii_isdigit(*p) && *p != '.' &&
            *p != '-') {
            return url_fail(errp, url,
                            "bucket name '%s' may only contain lowercase "
                            "letters, digits, '.' and '-'", name);
        }
    }
    if (!g_ascii_isalnum(name[0]) || !g_ascii_isalnum(name[len - 1])) {
        return url_fail(errp, url,
                        "bucket name '%s' must begin and end with a letter "
                        "or digit", name);
    }
    if (strstr(name, "..")) {
        return url_fail(errp, url,
                        "bucket name '%s' must not contain '..'", name);
    }
    if (looks_like_ipv4(name)) {
        return url_fail(errp, url,
                        "bucket name '%s' must not look like an IP address",
                        name);
    }
    return true;
}

/*
 * Parse "host", "host:port", "[v6]" or "[v6]:port" from @auth.  Returns
 * the canonical form (lowercase host, port without leading zeros) or NULL.
 * Caller frees.
 */
static char *parse_authority(const char *url, const char *auth,
                             GError **errp)
{
    g_autofree char *host = NULL;
    const char *port = NULL;
    guint64 portnum = 0;

    if (strchr(auth, '@')) {
        url_fail(errp, url,
                 "user information is not allowed in the URL (pass "
                 "credentials as options)");
        return NULL;
    }
    if (auth[0] == '[') {
        const char *end = strchr(auth, ']');

        if (!end || end == auth + 1) {
            url_fail(errp, url, "malformed IPv6 address");
            return NULL;
        }
        for (const char *p = auth + 1; p < end; p++) {
            if (!g_ascii_isxdigit(*p) && *p != ':' && *p != '.') {
                url_fail(errp, url, "malformed IPv6 address");
                return NULL;
            }
        }
        host = g_ascii_strdown(auth, end + 1 - auth);
        if (end[1] == ':') {
            port = end + 2;
        } else if (end[1] != '\0') {
            url_fail(errp, url, "unexpected characters after ']'");
            return NULL;
        }
    } else {
        const char *colon = strchr(auth, ':');
        size_t hostlen = colon ? (size_t)(colon - auth) : strlen(auth);

        if (hostlen == 0) {
            url_fail(errp, url, "missing host");
            return NULL;
        }
        for (size_t i = 0; i < hostlen; i++) {
            if (!g_ascii_isalnum(auth[i]) && auth[i] != '.' &&
                auth[i] != '-') {
                url_fail(errp, url, "invalid character '%c' in host name",
                         auth[i]);
                return NULL;
            }
        }
        host = g_ascii_strdown(auth, hostlen);
        port = colon ? colon + 1 : NULL;
    }

    if (!port) {
        return g_steal_pointer(&host);
    }
    if (!*port || strspn(port, "0123456789") != strlen(port) ||
        strlen(port) > 5 ||
        (portnum = g_ascii_strtoull(port, NULL, 10)) == 0 ||
        portnum > 65535) {
        url_fail(errp, url, "invalid port '%s'", port);
        return NULL;
    }
    return g_strdup_printf("%s:%u", host, (unsigned)portnum);
}

static bool parse_s3(const char *url, const char *rest, SpriteUrl *u,
                     GError **errp)
{
    const char *slash = strchr(rest, '/');
    g_autofree char *auth = NULL;
    g_auto(GStrv) parts = NULL;

    auth = slash ? g_strndup(rest, slash - rest) : g_strdup(rest);
    u->host = parse_authority(url, auth, errp);
    if (!u->host) {
        return false;
    }
    if (!slash || slash[1] == '\0') {
        return url_fail(errp, url, "missing bucket name");
    }
    parts = g_strsplit(slash + 1, "/", 3);
    if (!bucket_name_valid(url, parts[0], errp)) {
        return false;
    }
    if (!parts[1] || parts[1][0] == '\0') {
        if (parts[1] && parts[2]) {
            return url_fail(errp, url, "empty path component");
        }
        return url_fail(errp, url, "missing volume name");
    }
    if (parts[2]) {
        return url_fail(errp, url,
                        "expected /BUCKET/VOLUME after the host; a volume "
                        "name cannot contain '/'");
    }
    if (!volume_name_valid(url, parts[1], errp)) {
        return false;
    }
    u->bucket = g_strdup(parts[0]);
    u->volume = g_strdup(parts[1]);
    return true;
}

static bool parse_file(const char *url, const char *rest, SpriteUrl *u,
                       GError **errp)
{
    g_autofree char *path = NULL;
    const char *last;
    g_auto(GStrv) comps = NULL;

    if (rest[0] != '/') {
        return url_fail(errp, url,
                        "the path must be absolute, as in "
                        "sprite+file:///ABSOLUTE/DIR/VOLUME (a file URL "
                        "has no host)");
    }
    /* NULL for a bad escape or an escaped '/' (which would be ambiguous) */
    path = g_uri_unescape_string(rest, "/");
    if (!path) {
        return url_fail(errp, url, "invalid %%-escape in the path");
    }
    for (const char *p = path; *p; p++) {
        if ((unsigned char)*p < 0x20 || *p == 0x7f) {
            return url_fail(errp, url, "control character in the path");
        }
    }
    if (!g_utf8_validate(path, -1, NULL)) {
        return url_fail(errp, url, "the path is not valid UTF-8");
    }
    comps = g_strsplit(path + 1, "/", -1);
    for (int i = 0; comps[i]; i++) {
        if (comps[i][0] == '\0') {
            if (!comps[i + 1]) {
                return url_fail(errp, url,
                                "missing volume name (the path ends "
                                "with '/')");
            }
            return url_fail(errp, url, "empty component in the path");
        }
        if (!strcmp(comps[i], ".") || !strcmp(comps[i], "..")) {
            return url_fail(errp, url,
                            "'.' and '..' are not allowed in the path");
        }
    }
    last = strrchr(path, '/');
    if (!volume_name_valid(url, last + 1, errp)) {
        return false;
    }
    u->volume = g_strdup(last + 1);
    u->root = last == path ? g_strdup("/") : g_strndup(path, last - path);
    return true;
}

SpriteUrl *sprite_url_parse(const char *url, GError **errp)
{
    g_autoptr(SpriteUrl) u = g_new0(SpriteUrl, 1);
    const SchemeName *sn = NULL;
    const char *rest;
    bool ok;

    if (!url || !*url) {
        g_set_error(errp, SPRITE_ERROR, EINVAL, "empty volume URL");
        return NULL;
    }
    for (size_t i = 0; i < G_N_ELEMENTS(schemes); i++) {
        if (!g_ascii_strncasecmp(url, schemes[i].prefix,
                                 strlen(schemes[i].prefix))) {
            sn = &schemes[i];
            break;
        }
    }
    if (!sn) {
        const char *colon = strstr(url, "://");

        if (colon) {
            g_autofree char *scheme = g_strndup(url, colon - url);

            url_fail(errp, url,
                     "unknown scheme '%s' (expected sprite://, "
                     "sprite+http:// or sprite+file://)", scheme);
        } else {
            url_fail(errp, url,
                     "not a URL (expected sprite://HOST/BUCKET/VOLUME, "
                     "sprite+http://HOST/BUCKET/VOLUME or "
                     "sprite+file:///DIR/VOLUME)");
        }
        return NULL;
    }
    if (strchr(url, '?')) {
        url_fail(errp, url, "query strings ('?') are not allowed");
        return NULL;
    }
    if (strchr(url, '#')) {
        url_fail(errp, url, "fragments ('#') are not allowed");
        return NULL;
    }
    for (const char *p = url; *p; p++) {
        if ((unsigned char)*p <= 0x20 || *p == 0x7f) {
            url_fail(errp, url,
                     "spaces and control characters must be %%-escaped");
            return NULL;
        }
    }

    u->scheme = sn->scheme;
    rest = url + strlen(sn->prefix);
    if (sn->scheme == SPRITE_SCHEME_FILE) {
        ok = parse_file(url, rest, u, errp);
    } else {
        ok = parse_s3(url, rest, u, errp);
    }
    return ok ? g_steal_pointer(&u) : NULL;
}

char *sprite_url_to_string(const SpriteUrl *u)
{
    g_autofree char *path = NULL;
    g_autofree char *escaped = NULL;

    switch (u->scheme) {
    case SPRITE_SCHEME_HTTPS:
        return g_strdup_printf("sprite://%s/%s/%s", u->host, u->bucket,
                               u->volume);
    case SPRITE_SCHEME_HTTP:
        return g_strdup_printf("sprite+http://%s/%s/%s", u->host,
                               u->bucket, u->volume);
    case SPRITE_SCHEME_FILE:
        path = g_build_filename(u->root, u->volume, NULL);
        /* what a parser reads back as the same path; '?', '#', '%' and
         * spaces are escaped */
        escaped = g_uri_escape_string(
            path, "/:@" G_URI_RESERVED_CHARS_SUBCOMPONENT_DELIMITERS, FALSE);
        return g_strdup_printf("sprite+file://%s", escaped);
    }
    g_assert_not_reached();
}

void sprite_url_free(SpriteUrl *u)
{
    if (!u) {
        return;
    }
    g_free(u->host);
    g_free(u->bucket);
    g_free(u->root);
    g_free(u->volume);
    g_free(u);
}
