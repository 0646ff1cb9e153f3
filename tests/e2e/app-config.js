/** @type {AppTypes.Config} */
// OHIF's configuration for cem-node's browser test (tests/e2e/viewer.py serves
// it in place of dist/app-config.js; __ORIGIN__ becomes the server's origin).
// Data source: Orthanc's DICOMweb through the same-origin proxy. No tour, no
// investigational-use dialog, no confirmation prompts: SEG and SR load by
// themselves when their series is opened.
window.config = {
  routerBasename: null,
  extensions: [],
  modes: [],
  showStudyList: true,
  maxNumberOfWebWorkers: 2,
  showWarningMessageForCrossOrigin: false,
  showCPUFallbackMessage: false,
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
        friendlyName: 'Orthanc (cem-node test)',
        name: 'orthanc',
        wadoUriRoot: '__ORIGIN__/wado',
        qidoRoot: '__ORIGIN__/dicom-web',
        wadoRoot: '__ORIGIN__/dicom-web',
        qidoSupportsIncludeField: false,
        supportsReject: false,
        imageRendering: 'wadors',
        thumbnailRendering: 'wadors',
        // all series first: with lazy loading, a SEG opened first is bound to the
        // first display set of its referenced series, and MG series have one
        // display set per image (so the SEG of any other view is not shown)
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
