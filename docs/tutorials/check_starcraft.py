"""Says whether StarCraft II, the SMAC maps and `smac` are ready for the given maps (tutorial 4)."""

# --8<-- [start:check]
import sys

from fop_modules.envs import SMACEnv, StarCraftNotAvailable

for map_name in sys.argv[1:]:
    try:
        SMACEnv(map_name, backend="sc2").close()
        print(f"{map_name}: ready")
    except StarCraftNotAvailable as missing:  # names each missing piece and where to get it
        print(f"{map_name}: {missing}")
# --8<-- [end:check]
