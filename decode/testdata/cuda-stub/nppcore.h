/* Stub for type-checking only: see README.md. */
#ifndef LD_STUB_NPPCORE_H
#define LD_STUB_NPPCORE_H
#include "nppdefs.h"
NppStatus nppGetStreamContext(NppStreamContext *pNppStreamContext);
#endif
