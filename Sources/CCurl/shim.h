#ifndef MDEGATE_CCURL_SHIM_H
#define MDEGATE_CCURL_SHIM_H

// Handles import as distinct opaque types instead of void pointers. Every file that includes
// curl.h in this package must see the same definition, so it lives only here.
#define CURL_STRICTER
#include <curl/curl.h>

// The transport relies on CURLOPT_PROTOCOLS_STR (7.85.0), CURLOPT_PREREQFUNCTION (7.80.0),
// CURLOPT_CAINFO_BLOB (7.77.0) and CURLINFO_CAINFO (7.84.0). Fail at build time, not at run time.
#if LIBCURL_VERSION_NUM < 0x075500
#error "mdegate needs libcurl 7.85.0 or newer"
#endif

// curl_easy_setopt, curl_easy_getinfo and curl_multi_setopt are C variadics, which Swift cannot
// call. One typed wrapper per argument kind keeps every call checked by the compiler, as
// swift-corelibs-foundation does for its own libcurl use.

static inline CURLcode mdegate_curl_easy_setopt_long(CURL *handle, CURLoption option, long value) {
    return curl_easy_setopt(handle, option, value);
}

static inline CURLcode mdegate_curl_easy_setopt_string(CURL *handle, CURLoption option, const char *value) {
    return curl_easy_setopt(handle, option, value);
}

static inline CURLcode mdegate_curl_easy_setopt_pointer(CURL *handle, CURLoption option, void *value) {
    return curl_easy_setopt(handle, option, value);
}

static inline CURLcode mdegate_curl_easy_setopt_off_t(CURL *handle, CURLoption option, curl_off_t value) {
    return curl_easy_setopt(handle, option, value);
}

static inline CURLcode mdegate_curl_easy_setopt_slist(CURL *handle, CURLoption option, struct curl_slist *value) {
    return curl_easy_setopt(handle, option, value);
}

static inline CURLcode mdegate_curl_easy_setopt_blob(CURL *handle, CURLoption option, struct curl_blob *value) {
    return curl_easy_setopt(handle, option, value);
}

static inline CURLcode mdegate_curl_easy_setopt_read_callback(CURL *handle, CURLoption option, curl_read_callback value) {
    return curl_easy_setopt(handle, option, value);
}

// Also used for CURLOPT_HEADERFUNCTION, which has the same signature.
static inline CURLcode mdegate_curl_easy_setopt_write_callback(CURL *handle, CURLoption option, curl_write_callback value) {
    return curl_easy_setopt(handle, option, value);
}

static inline CURLcode mdegate_curl_easy_setopt_seek_callback(CURL *handle, CURLoption option, curl_seek_callback value) {
    return curl_easy_setopt(handle, option, value);
}

static inline CURLcode mdegate_curl_easy_setopt_debug_callback(CURL *handle, CURLoption option, curl_debug_callback value) {
    return curl_easy_setopt(handle, option, value);
}

static inline CURLcode mdegate_curl_easy_setopt_prereq_callback(CURL *handle, CURLoption option, curl_prereq_callback value) {
    return curl_easy_setopt(handle, option, value);
}

static inline CURLcode mdegate_curl_easy_getinfo_long(CURL *handle, CURLINFO info, long *value) {
    return curl_easy_getinfo(handle, info, value);
}

static inline CURLcode mdegate_curl_easy_getinfo_string(CURL *handle, CURLINFO info, char **value) {
    return curl_easy_getinfo(handle, info, value);
}

static inline CURLcode mdegate_curl_easy_getinfo_pointer(CURL *handle, CURLINFO info, void **value) {
    return curl_easy_getinfo(handle, info, value);
}

static inline CURLcode mdegate_curl_easy_getinfo_off_t(CURL *handle, CURLINFO info, curl_off_t *value) {
    return curl_easy_getinfo(handle, info, value);
}

static inline CURLMcode mdegate_curl_multi_setopt_long(CURLM *handle, CURLMoption option, long value) {
    return curl_multi_setopt(handle, option, value);
}

static inline CURLMcode mdegate_curl_multi_setopt_pointer(CURLM *handle, CURLMoption option, void *value) {
    return curl_multi_setopt(handle, option, value);
}

#endif
