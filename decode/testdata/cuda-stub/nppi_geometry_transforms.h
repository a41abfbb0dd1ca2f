/* Stub for type-checking only: see README.md. */
#ifndef LD_STUB_NPPI_GEOMETRY_TRANSFORMS_H
#define LD_STUB_NPPI_GEOMETRY_TRANSFORMS_H
#include "nppdefs.h"
NppStatus nppiResize_8u_C3R_Ctx(const Npp8u *pSrc, int nSrcStep, NppiSize oSrcSize, NppiRect oSrcRectROI,
	Npp8u *pDst, int nDstStep, NppiSize oDstSize, NppiRect oDstRectROI, int eInterpolation,
	NppStreamContext nppStreamCtx);
NppStatus nppiMirror_8u_C3IR_Ctx(Npp8u *pSrcDst, int nSrcDstStep, NppiSize oROI, NppiAxis flip,
	NppStreamContext nppStreamCtx);
#endif
