# The seed document's steering example with only the import line changed.
# Run inside basf2 with $BELLE2_BACKGROUND_DIR set: basf2 examples/steering_inject_simulation.py
import basf2
from background import get_background_files

from pxdbg.background_generator import PXDBackgroundGenerator, inject_simulation

module = PXDBackgroundGenerator(model="resnet")
add_simulation = inject_simulation(module)

path = basf2.create_path()
path.add_module("EventInfoSetter", evtNumList=[128])
path.add_module("EvtGenInput")
add_simulation(path, bkgfiles=get_background_files())
basf2.process(path)
