/** @type {AppTypes.Config} */
// OHIF's configuration in the compose stack (deploy/compose.yaml): served as
// /app-config.js by the "ohif" service (deploy/ohif-nginx.conf.template), in place of
// the image's own. The browser tests (tests/e2e, tests/e2e/viewer.py) serve this very
// file and prove it with OHIF 3.13.2: Orthanc's DICOMweb on the viewer's own origin
// (the ohif service proxies /dicom-web and /wado to Orthanc), all series loaded first,
// SEG and SR loaded without a prompt, no tour and no investigational-use dialog.
// The origin is the one the browser used (http://127.0.0.1:3000 by default), so
// publishing the viewer on another port or host name needs no change here.
const cemNodeOrigin = window.location.origin;

window.config = {
  routerBasename: null,
  extensions: [],
  modes: [],
  showStudyList: true,
  maxNumberOfWebWorkers: 3,
  showWarningMessageForCrossOrigin: false,
  showCPUFallbackMessage: true,
  showLoadingIndicator: true,
  investigationalUseDialog: { option: 'never' },
  disableConfirmationPrompts: true,
  measurementTrackingMode: 'simplified',
  customizationService: [{ 'ohif.tours': { $set: [] } }],
  defaultDataSourceName: 'orthanc',
  dataSources: [
    {
      namespace: '@ohif/extension-default.dataSourcesModule.dicomweb',
      sourceName: 'orthanc',
      configuration: {
        friendlyName: 'Orthanc (cem-node stack)',
        name: 'orthanc',
        wadoUriRoot: `${cemNodeOrigin}/wado`,
        qidoRoot: `${cemNodeOrigin}/dicom-web`,
        wadoRoot: `${cemNodeOrigin}/dicom-web`,
        qidoSupportsIncludeField: false,
        supportsReject: false,
        imageRendering: 'wadors',
        thumbnailRendering: 'wadors',
        // all series first: with lazy loading, a SEG opened first is bound to the
        // first display set of its referenced series, and MG series have one display
        // set per image (so the SEG of any other view would not be shown)
        enableStudyLazyLoad: false,
        supportsFuzzyMatching: false,
        supportsWildcard: true,
        staticWado: false,
        singlepart: 'bulkdata,video',
        omitQuotationForMultipartRequest: true,
        bulkDataURI: { enabled: true },
      },
    },
  ],
};
