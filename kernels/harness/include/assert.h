/* CPU execution harness: a failing device assert() ends the launch with an error naming the
 * kernel, block, thread and expression (instead of aborting the whole process). Shadows the C
 * library's <assert.h> for kernel sources only; like it, may be included more than once. */
#undef assert
#ifdef NDEBUG
#define assert(e) ((void)0)
#else
#ifdef __cplusplus
extern "C" [[noreturn]] void armsrace_emu_assert_fail(const char*, const char*, unsigned, const char*);
#define assert(e) \
    (static_cast<bool>(e) ? (void)0 : armsrace_emu_assert_fail(#e, __FILE__, __LINE__, __func__))
#else
void armsrace_emu_assert_fail(const char*, const char*, unsigned, const char*);
#define assert(e) ((e) ? (void)0 : armsrace_emu_assert_fail(#e, __FILE__, __LINE__, __func__))
#endif
#endif
