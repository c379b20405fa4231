#include "CMDEGateSystem.h"
