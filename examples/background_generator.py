# Full chain with PXD background generated on the fly: generation, simulation with background overlay,
# reconstruction, mdst output. The release's pxd/examples/background_generator.py with our import line.
# Run inside basf2: basf2 examples/background_generator.py
# To use local producer processes or a producer farm instead of in-process generation, give the module
# workers=2 or endpoints=["tcp://gpu01:5555"]. To compare event by event with the release's own module (same
# weights, same seed), generate in-process with compat_rng=True.
# get_background_files() reads the overlay files from $BELLE2_BACKGROUND_DIR.
import basf2 as b2
from background import get_background_files
from mdst import add_mdst_output
from reconstruction import add_reconstruction

from pxdbg.background_generator import PXDBackgroundGenerator, inject_simulation

main = b2.create_path()
main.add_module("EventInfoSetter", evtNumList=[10])
main.add_module("EventInfoPrinter")
main.add_module("EvtGenInput")

# the generator module replaces the PXD digits sampled from the background overlay files
generator = PXDBackgroundGenerator(model="convnet")
add_simulation = inject_simulation(generator)
add_simulation(main, bkgfiles=get_background_files())

add_reconstruction(main)
add_mdst_output(main, filename="mdst.root")
b2.process(main)
