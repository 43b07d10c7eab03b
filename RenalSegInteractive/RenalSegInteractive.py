"""RenalSegInteractive module: refine kidney, tumor and cyst segments with positive/negative clicks (wiring only).

The work is done by ``RenalSegInteractiveLib.logic.InteractiveLogic`` (headless, tested on slicer-core):
clicks are markups control points; inference runs on one persistent worker thread; each refinement is
written back into the changed box of the segments with a Segment-Editor-style undo state.
"""

from __future__ import annotations

import logging

import slicer
from slicer.util import VTKObservationMixin

from RenalSegInteractiveLib.logic import CLICK_COLORS, InteractiveLogic  # noqa: F401  (console use)
from RenalSegLib import labels

try:
    import qt
    from slicer.i18n import tr as _
    from slicer.i18n import translate
    from slicer.ScriptedLoadableModule import ScriptedLoadableModule, ScriptedLoadableModuleTest, ScriptedLoadableModuleWidget

    HAVE_GUI = True
except ImportError:  # plain Python with slicer-core: only the logic is usable
    HAVE_GUI = False

    class ScriptedLoadableModule:  # stand-ins so the classes below can be defined (not used)
        pass

    class ScriptedLoadableModuleWidget:
        pass

    class ScriptedLoadableModuleTest:
        pass

    def _(text):
        return text

    def translate(context, text):
        return text

POLL_MS = 30
MEASURE_DELAY_MS = 700  # re-measure once the clicks pause this long; the next click cancels a measurement
TARGET_CLASSES = {"Renal tumor": labels.TUMOR, "Renal cyst": labels.CYST, "Kidney": labels.KIDNEY}
SHORTCUTS = {"a": "positive", "s": "negative", "u": "undo"}


class RenalSegInteractive(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("RenalSeg Interactive")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Segmentation")]
        self.parent.dependencies = ["RenalSeg"]
        self.parent.contributors = ["RenalSeg contributors"]
        self.parent.helpText = _("Click inside a missed tumor or cyst (positive, key A) or on a leak (negative, key S); "
                                 "each click refines the segmentation around it. U undoes the last click. Works on "
                                 "segmentations made by RenalSeg or drawn by hand; RenalSeg's results table follows the "
                                 "clicks. Tick Keep unchanged to protect a class from clicks. Research use only.")
        self.parent.acknowledgementText = _("Part of the RenalSeg extension.")


class RenalSegInteractiveWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None):
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._pending = []  # futures of clicks on the worker thread, applied in order
        self._clickPoints = []  # (markups node, control point ID) per applied click, for undo
        self._clickNodes = {}
        self._shortcuts = []
        self._sessionReady = None  # future of the session being built on the worker thread
        self._warmUp = None  # future of the model warm-up
        self._loadingShown = False  # the status label said the model was loading slowly
        self._measuring = None  # future of the results table's re-measurement on the worker thread

    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/RenalSegInteractive.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = InteractiveLogic(slicer.mrmlScene)
        for name in TARGET_CLASSES:
            self.ui.targetClassComboBox.addItem(name)
        self._timer = qt.QTimer()
        self._timer.setInterval(POLL_MS)
        self._timer.connect("timeout()", self._poll)
        self._measureTimer = qt.QTimer()
        self._measureTimer.setSingleShot(True)
        self._measureTimer.setInterval(MEASURE_DELAY_MS)
        self._measureTimer.connect("timeout()", self._measure)
        self.ui.startButton.connect("clicked(bool)", self.onStart)
        self.ui.undoButton.connect("clicked(bool)", self.onUndo)
        self.ui.redoButton.connect("clicked(bool)", self.onRedo)
        self.ui.resetButton.connect("clicked(bool)", self.onReset)
        for checkBox in self._lockCheckBoxes().values():
            checkBox.connect("toggled(bool)", self.onLocksChanged)
        for key, action in SHORTCUTS.items():
            shortcut = qt.QShortcut(qt.QKeySequence(key), slicer.util.mainWindow())
            shortcut.connect("activated()", lambda action=action: self._onShortcut(action))
            self._shortcuts.append(shortcut)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, lambda caller, event: self._stop())

    def enter(self):
        for shortcut in self._shortcuts:
            shortcut.enabled = True
        self._warmUp = self.logic.warm_up()  # load + run the model once, on the worker thread
        self._timer.start()  # _poll says what a slow first load is doing

    def exit(self):
        for shortcut in self._shortcuts:
            shortcut.enabled = False
        for placeWidget in (self.ui.positivePlaceWidget, self.ui.negativePlaceWidget):
            placeWidget.setPlaceModeEnabled(False)

    def onReload(self):
        """Developer reload: also reload the logic packages (Slicer reloads only this file), with importlib."""
        import importlib
        import sys

        for name in sorted(n for n in sys.modules if n.startswith(("RenalSegLib", "RenalSegModuleLib", "RenalSegInteractiveLib"))):
            importlib.reload(sys.modules[name])
        ScriptedLoadableModuleWidget.onReload(self)

    def cleanup(self):
        self.removeObservers()
        self._stop()
        self.logic.shutdown()

    def _stop(self):
        self._measureTimer.stop()
        self._measuring = None
        self._pending.clear()
        self._clickPoints.clear()
        self._clickNodes = {}

    # -- session ---------------------------------------------------------------------------------------

    def onStart(self):
        with slicer.util.tryWithErrorDisplay(_("Could not start refinement."), waitCursor=True):
            volume = self.ui.inputVolumeSelector.currentNode()
            segmentation = self.ui.segmentationSelector.currentNode()
            if volume is None or segmentation is None:
                raise ValueError(_("Select a CT volume and a segmentation."))
            target = self.ui.targetSegmentSelector.currentSegmentID()
            targets = {}
            if target and segmentation.GetSegmentation().GetSegment(target):  # a hand-drawn segment for the chosen class
                klass = TARGET_CLASSES[self.ui.targetClassComboBox.currentText]
                if klass != labels.KIDNEY:
                    targets[klass] = segmentation.GetSegmentation().GetSegment(target).GetName()
            self._measureTimer.stop()
            self._measuring = None  # a refresh of the previous segmentation's table is dropped (start() cancels it)
            self._sessionReady = self.logic.start(volume, segmentation, targets)  # built on the worker; clicks queue behind it
            self._clickNodes = {positive: self._clickNode(positive) for positive in (True, False)}
            self.ui.positivePlaceWidget.setCurrentNode(self._clickNodes[True])
            self.ui.negativePlaceWidget.setCurrentNode(self._clickNodes[False])
            self.ui.statusLabel.text = _("Preparing the image... then click with A (add) or S (remove) in the slice views.")

    def _lockCheckBoxes(self):
        return {labels.KIDNEY: self.ui.kidneyLockCheckBox, labels.TUMOR: self.ui.tumorLockCheckBox, labels.CYST: self.ui.cystLockCheckBox}

    def onLocksChanged(self, _checked=None):
        """Classes whose box is ticked stay as they are from the next click on."""
        self.logic.set_locked_labels([label for label, checkBox in self._lockCheckBoxes().items() if checkBox.checked])

    def _clickNode(self, positive):
        name = "RenalSeg positive clicks" if positive else "RenalSeg negative clicks"
        node = slicer.mrmlScene.GetFirstNodeByName(name) or slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", name)
        node.CreateDefaultDisplayNodes()
        node.GetDisplayNode().SetSelectedColor(*CLICK_COLORS[positive])
        node.GetDisplayNode().SetPointLabelsVisibility(False)
        self.removeObserver(node, slicer.vtkMRMLMarkupsNode.PointPositionDefinedEvent, self._onPointPlaced)
        self.addObserver(node, slicer.vtkMRMLMarkupsNode.PointPositionDefinedEvent, self._onPointPlaced)
        return node

    def _onShortcut(self, action):
        if action == "undo":
            self.onUndo()
            return
        placeWidget = self.ui.positivePlaceWidget if action == "positive" else self.ui.negativePlaceWidget
        placeWidget.setPlaceModeEnabled(True)

    def _onPointPlaced(self, node, event):
        positive = self._clickNodes.get(True) is not None and node.GetID() == self._clickNodes[True].GetID()
        index = node.GetNumberOfControlPoints() - 1
        label = TARGET_CLASSES[self.ui.targetClassComboBox.currentText]
        # points are remembered by ID: indices shift when an earlier point is removed
        self._pending.append((self.logic.submit_markups_click(node, index, positive, label), node, node.GetNthControlPointID(index)))
        self._timer.start()

    @staticmethod
    def _removePoint(node, pointID):
        index = node.GetNthControlPointIndexByID(pointID)
        if index >= 0:
            node.RemoveNthControlPoint(index)

    def _poll(self):
        self._showLoading()
        while self._pending and self._pending[0][0].done():
            future, node, pointID = self._pending.pop(0)
            try:
                result = future.result()
                self.logic.apply_click(result)
                self._clickPoints.append((node, pointID))
                self.ui.statusLabel.text = _("Click {count}: {change}.").format(count=len(self._clickPoints), change=result.change.describe())
                self._measureTimer.start()
            except Exception as error:  # e.g. a click outside the image: drop the point, say why
                self._removePoint(node, pointID)
                self.ui.statusLabel.text = str(error)
                logging.warning("RenalSeg click failed: %s", error)
        if self._measuring is not None and self._measuring.done():
            future, self._measuring = self._measuring, None
            try:
                self.logic.apply_measurements(future.result())  # None (nothing to apply) when a click cancelled it
            except Exception as error:
                logging.warning("RenalSeg measurements not refreshed: %s", error)
        if not self._pending and self._warmUp is None and self._measuring is None:
            self._timer.stop()

    def _measure(self):
        """Refresh the segmentation's results table (if RenalSeg made one) once the clicks have paused."""
        if self._pending:
            self._measureTimer.start()
            return
        self._measuring = self.logic.submit_measurements()
        if self._measuring is not None:
            self._timer.start()

    def _showLoading(self):
        """While the model loads slowly (the first time on a CPU: a one-time export), say so; then that it is loaded."""
        notice = self.logic.loading_notice()
        if notice:
            self.ui.statusLabel.text = _("Loading the model: {notice}...").format(notice=notice)
            self._loadingShown = True
        if self._warmUp is not None and self._warmUp.done():
            self._warmUp = None
            if self._loadingShown:
                self.ui.statusLabel.text = _("Model loaded.")
                self._loadingShown = False

    def onUndo(self):
        with slicer.util.tryWithErrorDisplay(_("Undo failed.")):
            if self.logic.undo() and self._clickPoints:
                self._removePoint(*self._clickPoints.pop())
            self._measureTimer.start()

    def onRedo(self):
        with slicer.util.tryWithErrorDisplay(_("Redo failed.")):
            self.logic.redo()
            self._measureTimer.start()

    def onReset(self):
        with slicer.util.tryWithErrorDisplay(_("Reset failed."), waitCursor=True):
            self.logic.reset()
            for node in self._clickNodes.values():
                node.RemoveAllControlPoints()
            self._clickPoints.clear()
            self._measureTimer.start()


class RenalSegInteractiveTest(ScriptedLoadableModuleTest):
    """Self-test for Slicer: a click on a synthetic CT refines only its crop, the results table follows it, and undo
    restores the segmentation."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_click_and_undo()

    def test_click_and_undo(self):
        import numpy as np

        from RenalSegInteractiveLib.selftest import BallSession
        from RenalSegModuleLib import segmentation_io as io
        from RenalSegModuleLib.logic import RenalSegLogic
        from RenalSegModuleLib.selftest import synthetic_ct, threshold_engine

        self.delayDisplay("Refining a synthetic CT with a stand-in session")
        volume = io.add_volume_node(slicer.mrmlScene, synthetic_ct(), "Synthetic CT")
        result = RenalSegLogic(slicer.mrmlScene, threshold_engine).process(volume)
        logic = InteractiveLogic(slicer.mrmlScene, BallSession)
        try:
            logic.start(volume, result.segmentation_node).result(30)
            before = logic.read_kits_labels()
            centre = np.array(volume.GetImageData().GetDimensions()) // 2
            box = logic.click(io.ijk_to_ras(volume)[:3] @ [*centre, 1], label=labels.CYST)
            after = logic.read_kits_labels()
            outside = np.ones(after.shape, bool)
            outside[box] = False
            self.assertTrue(np.array_equal(after[outside], before[outside]))
            self.assertTrue((after == labels.CYST).any())
            rows = logic.submit_measurements().result(30)
            self.assertTrue(logic.apply_measurements(rows))
            self.assertIn("Renal cyst 1", [row["structure"] for row in rows])
            self.assertEqual(result.table_node.GetNumberOfRows(), len(rows))
            self.assertTrue(logic.undo())
            self.assertTrue(np.array_equal(logic.read_kits_labels(), before))
        finally:
            logic.shutdown()
        self.delayDisplay("Test passed")
