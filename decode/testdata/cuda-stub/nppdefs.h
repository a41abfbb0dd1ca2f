/* Stub for type-checking only: see README.md. */
#ifndef LD_STUB_NPPDEFS_H
#define LD_STUB_NPPDEFS_H
#include "cuda_runtime_api.h"

typedef unsigned char Npp8u;
typedef enum { NPP_NO_ERROR = 0, NPP_SUCCESS = 0 } NppStatus;
typedef struct { int width; int height; } NppiSize;
typedef struct { int x; int y; int width; int height; } NppiRect;
typedef enum { NPP_HORIZONTAL_AXIS = 0, NPP_VERTICAL_AXIS = 1, NPP_BOTH_AXIS = 2 } NppiAxis;
typedef enum {
	NPPI_INTER_UNDEFINED = 0, NPPI_INTER_NN = 1, NPPI_INTER_LINEAR = 2, NPPI_INTER_CUBIC = 4,
	NPPI_INTER_SUPER = 8, NPPI_INTER_LANCZOS = 16
} NppiInterpolationMode;
typedef struct {
	cudaStream_t hStream;
	int nCudaDeviceId;
	int nMultiProcessorCount;
	int nMaxThreadsPerMultiProcessor;
	int nMaxThreadsPerBlock;
	size_t nSharedMemPerBlock;
	int nCudaDevAttrComputeCapabilityMajor;
	int nCudaDevAttrComputeCapabilityMinor;
	unsigned int nStreamFlags;
	int nReserved0;
} NppStreamContext;
#endif
