"""RenalSeg module: one-click segmentation of kidneys, renal tumors and renal cysts in CT (wiring only).

The work is done by ``RenalSegModuleLib.logic.RenalSegLogic`` (headless, tested on slicer-core);
this file connects it to Slicer's GUI. The Qt parts are guarded so the file imports in plain Python.
"""

from __future__ import annotations

import logging
import os
from typing import Annotated

import slicer
from slicer.util import VTKObservationMixin

from RenalSegModuleLib.logic import RenalSegLogic, SegmentationSettings  # noqa: F401  (console use: RenalSeg.RenalSegLogic)

try:
    import qt
    from slicer.i18n import tr as _
    from slicer.i18n import translate
    from slicer.parameterNodeWrapper import Choice, parameterNodeWrapper
    from slicer.ScriptedLoadableModule import (ScriptedLoadableModule, ScriptedLoadableModuleLogic,
                                               ScriptedLoadableModuleTest, ScriptedLoadableModuleWidget)

    HAVE_GUI = True
except ImportError:  # plain Python with slicer-core: only the logic is usable
    HAVE_GUI = False

    class ScriptedLoadableModule:  # stand-ins so the classes below can be defined (not used)
        pass

    class ScriptedLoadableModuleWidget:
        pass

    class ScriptedLoadableModuleTest:
        pass

    class ScriptedLoadableModuleLogic:
        pass

    def _(text):
        return text

    def translate(context, text):
        return text

    def parameterNodeWrapper(cls):
        return cls

    def Choice(values):
        return values

POLL_MS = 100


class RenalSeg(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("RenalSeg")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Segmentation")]
        self.parent.dependencies = []
        self.parent.contributors = ["RenalSeg contributors"]
        self.parent.helpText = _("Segments the kidneys (left and right), renal tumors and renal cysts in a CT with one click, "
                                 "measures them and exports STL meshes for surgical planning. Runs offline: the model ships "
                                 "with the extension. Research use only, not for clinical decisions.")
        self.parent.acknowledgementText = _("Trained with KiTS23 label maps (CC BY-NC-SA 4.0, KiTS challenge).")


@parameterNodeWrapper
class RenalSegParameterNode:
    """Settings saved with the scene."""

    inputVolume: slicer.vtkMRMLScalarVolumeNode
    outputSegmentation: slicer.vtkMRMLSegmentationNode
    resultsTable: slicer.vtkMRMLTableNode
    device: Annotated[str, Choice(["auto", "cpu", "cuda", "mps"])] = "auto"
    fast: bool = False
    mirror: bool = False
    minLesionProbability: float = 0.0
    exportCoordinates: Annotated[str, Choice(["LPS", "RAS"])] = "LPS"
    exportSmoothing: bool = True


class RenalSegWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None):
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._task = None
        self._timer = None
        self._targets = (None, None, None)  # volume, segmentation, table of the run in progress

    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/RenalSeg.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = RenalSegLogic(slicer.mrmlScene)
        from RenalSegModuleLib.terminology import register_terminology

        register_terminology(slicer.modules.terminologies.logic())
        self._timer = qt.QTimer()
        self._timer.setInterval(POLL_MS)
        self._timer.connect("timeout()", self._poll)
        self.ui.segmentButton.connect("clicked(bool)", self.onSegment)
        self.ui.cancelButton.connect("clicked(bool)", self.onCancel)
        self.ui.exportButton.connect("clicked(bool)", self.onExport)
        self.ui.exportReportButton.connect("clicked(bool)", self.onExportReport)
        self.ui.updateMeasurementsButton.connect("clicked(bool)", self.onUpdateMeasurements)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.initializeParameterNode()
        self._setRunning(False)

    def onReload(self):
        """Developer reload: also reload the logic packages (Slicer reloads only this file), with importlib."""
        import importlib
        import sys

        for name in sorted(n for n in sys.modules if n.startswith(("RenalSegLib", "RenalSegModuleLib"))):
            importlib.reload(sys.modules[name])
        ScriptedLoadableModuleWidget.onReload(self)

    def cleanup(self):
        self.onCancel()
        self.removeObservers()

    def enter(self):
        self.initializeParameterNode()

    def onSceneStartClose(self, caller, event):
        self.onCancel()
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event):
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self):
        parameterLogic = ScriptedLoadableModuleLogic()
        parameterLogic.moduleName = "RenalSeg"
        self.setParameterNode(RenalSegParameterNode(parameterLogic.getParameterNode()))
        if not self._parameterNode.inputVolume:
            self._parameterNode.inputVolume = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")

    def setParameterNode(self, inputParameterNode):
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)

    # -- auto segmentation: engine on a worker thread, MRML writes back here on the main thread ---------

    def onSegment(self):
        from RenalSegModuleLib import dependencies

        with slicer.util.tryWithErrorDisplay(_("Segmentation failed to start."), waitCursor=True):
            if not dependencies.install():  # asks first; pip runs on the main thread, as Slicer requires
                return
            replaced = self.logic.segments_to_replace(self._parameterNode.outputSegmentation)
            if replaced and not slicer.util.confirmOkCancelDisplay(
                    _("This replaces the segments {names} (your edits to them are lost; other segments are kept). "
                      "Continue?").format(names=", ".join(replaced))):
                return
            settings = SegmentationSettings(device=self._parameterNode.device, fast=self._parameterNode.fast, mirror=self._parameterNode.mirror,
                                            min_lesion_probability=self._parameterNode.minLesionProbability)
            # the nodes are fixed now: changing the selectors during the run must not redirect the result
            self._targets = (self._parameterNode.inputVolume, self._parameterNode.outputSegmentation, self._parameterNode.resultsTable)
            self._task = self.logic.start_process(self._targets[0], settings)
            self._setRunning(True)
            self._timer.start()

    def onCancel(self):
        if self._task is not None:
            self._task.cancel()
            self.ui.statusLabel.text = _("Cancelling...")

    def _poll(self):
        if self._task is None or self._task.poll(self._onProgress, self._onDone, self._onError):
            self._timer.stop()
            self._task = None
            self._setRunning(False)

    def _onProgress(self, fraction, message):
        self.ui.progressBar.value = int(round(100 * fraction))
        self.ui.statusLabel.text = message

    def _onDone(self, prepared):
        with slicer.util.tryWithErrorDisplay(_("Writing the segments failed."), waitCursor=True):
            volume, segmentation, table = self._targets
            result = self.logic.apply_labels(volume, prepared, segmentation, table)
            self._parameterNode.outputSegmentation = result.segmentation_node
            self._parameterNode.resultsTable = result.table_node
            self.ui.resultsTableView.setMRMLTableNode(result.table_node)
            found = result.table_node.GetNumberOfRows() > 0
            self.ui.statusLabel.text = _("Done.") if found else _("Done: no kidney found in this CT (does it cover the kidneys?).")

    def _onError(self, error):
        from RenalSegLib.inference import Cancelled

        if isinstance(error, Cancelled):
            self.ui.statusLabel.text = _("Cancelled; the scene is unchanged.")
            return
        self.ui.statusLabel.text = _("Failed.")
        logging.error("RenalSeg failed", exc_info=error)
        slicer.util.errorDisplay(_("Segmentation failed: {message}").format(message=error))

    def _setRunning(self, running):
        self.ui.segmentButton.enabled = not running
        self.ui.updateMeasurementsButton.enabled = not running
        self.ui.cancelButton.enabled = running
        self.ui.progressBar.visible = running
        if not running:
            self.ui.progressBar.value = 0

    def onUpdateMeasurements(self):
        with slicer.util.tryWithErrorDisplay(_("Measuring the segments failed."), waitCursor=True):
            table, rows = self.logic.update_measurements(self._parameterNode.inputVolume, self._parameterNode.outputSegmentation,
                                                         self._parameterNode.resultsTable)
            self._parameterNode.resultsTable = table
            self.ui.resultsTableView.setMRMLTableNode(table)
            self.ui.statusLabel.text = _("Measured {count} structures.").format(count=len(rows))

    def onExport(self):
        with slicer.util.tryWithErrorDisplay(_("STL export failed."), waitCursor=True):
            folder = self.ui.exportFolderButton.directory
            files = self.logic.export_stl(self._parameterNode.outputSegmentation, folder, self._parameterNode.exportCoordinates,
                                          self._parameterNode.exportSmoothing)
            self.ui.statusLabel.text = _("Exported {count} STL files to {folder}").format(count=len(files), folder=folder)

    def onExportReport(self):
        segmentation = self._parameterNode.outputSegmentation
        if segmentation is None:
            slicer.util.errorDisplay(_("Choose the segmentation to report on."))
            return
        target = self.logic.report_folder(segmentation, self.ui.exportFolderButton.directory)
        if target.is_dir() and any(target.iterdir()) and not slicer.util.confirmOkCancelDisplay(
                _("{folder} already holds a report; replace its files?").format(folder=target)):
            return
        self.ui.statusLabel.text = _("Writing the planning report (a few seconds)...")
        slicer.app.processEvents()  # show it: the export then runs on the main thread, as its 3D view renders with VTK
        with slicer.util.tryWithErrorDisplay(_("Report export failed."), waitCursor=True):
            files = self.logic.export_report(self._parameterNode.inputVolume, segmentation, self.ui.exportFolderButton.directory)
            self.ui.statusLabel.text = _("Wrote {count} files to {folder}").format(count=len(files), folder=target)


class RenalSegTest(ScriptedLoadableModuleTest):
    """Self-test for Slicer: the logic on a synthetic CT with a threshold engine, then the real engine when its model is present."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_segments_table_and_stl()
        self.setUp()
        self.test_real_engine()

    def test_segments_table_and_stl(self):
        import tempfile

        from RenalSegModuleLib import segmentation_io as io
        from RenalSegModuleLib.selftest import synthetic_ct, threshold_engine

        self.delayDisplay("Segmenting a synthetic CT with a stand-in engine")
        volume = io.add_volume_node(slicer.mrmlScene, synthetic_ct(), "Synthetic CT")
        logic = RenalSegLogic(slicer.mrmlScene, threshold_engine)
        result = logic.process(volume)
        segmentation = result.segmentation_node.GetSegmentation()
        names = [segmentation.GetNthSegment(n).GetName() for n in range(segmentation.GetNumberOfSegments())]
        self.assertEqual(names, ["Right kidney", "Left kidney", "Renal tumor", "Renal cyst"])
        self.assertEqual(result.table_node.GetNumberOfRows(), 3)  # two kidneys and one tumor, no cyst
        table, rows = logic.update_measurements(volume, result.segmentation_node, result.table_node)
        self.assertEqual((table, [r["structure"] for r in rows]), (result.table_node, [r["structure"] for r in result.measurements]))
        with tempfile.TemporaryDirectory() as folder:
            files = logic.export_stl(result.segmentation_node, folder, "LPS")
            self.assertTrue(all(os.path.getsize(f) > 0 for f in files[:3]))
            report = logic.export_report(volume, result.segmentation_node, folder)
            self.assertEqual(sorted(f.name for f in report),
                             ["measurements.csv", "measurements.json", "report.html", "report.pdf", "report.png"])
        self.delayDisplay("Test passed")

    def test_real_engine(self):
        from RenalSegLib.network import default_model_path

        try:
            model = default_model_path()
        except Exception as exc:  # no weights in this build
            self.delayDisplay(f"Real-engine test skipped: {exc}")
            return
        if not os.path.exists(model):
            self.delayDisplay("Real-engine test skipped: no model file")
            return
        from RenalSegModuleLib import segmentation_io as io
        from RenalSegModuleLib.selftest import synthetic_ct

        volume = io.add_volume_node(slicer.mrmlScene, synthetic_ct(), "Synthetic CT")
        result = RenalSegLogic(slicer.mrmlScene).process(volume, settings=SegmentationSettings(fast=True))
        self.assertEqual(result.segmentation_node.GetSegmentation().GetNumberOfSegments(), 4)
        self.delayDisplay("Real engine ran")
